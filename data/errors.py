"""User-facing errors: one plain line and exit code 2, never a traceback."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something the user can fix (a path, a flag, a data set). Printed as one line."""


def cli(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a command-line ``main``: a UserError becomes ``error: ...`` on stderr + exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            where = f"[rank {os.environ.get('RANK', '0')}] " if world > 1 else ""
            print(f"{where}error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    return wrapper
