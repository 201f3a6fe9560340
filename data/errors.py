"""User-facing errors: one plain line and exit code 2, never a traceback."""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from typing import Callable, Iterator, TypeVar

from data.quick_exit import skip_final_gc

T = TypeVar("T")

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Something the user can fix (a path, a flag, a data set). Printed as one line."""

    exit_code = EXIT_USER_ERROR


class PeerFailure(UserError):
    """Another rank hung or died: printed as one line, exit status 1 (not a usage error)."""

    exit_code = 1


class RunFailure(UserError):
    """The run's machinery failed (a loader worker died or froze, the object store stayed
    away): printed as one line, exit status 1 (not a usage error)."""

    exit_code = 1


# What a full disk, a read-only mount or missing permissions look like, from Python's
# OSError or inside a Spark/Hadoop (Java) error message.
STORAGE_PROBLEMS = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                    "Permission denied", "Not a directory")


@contextlib.contextmanager
def storage_errors(what: str, consequence: str) -> Iterator[None]:
    """Turn a storage failure inside the block into one line: ``what: reason; consequence``."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        reason = next((p for p in STORAGE_PROBLEMS if p in text), None)
        if reason is None:
            raise
        raise UserError(f"{what}: {reason}; {consequence}") from None


def cli(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a command-line ``main``: a UserError becomes ``error: ...`` on stderr + exit 2,
    and the process skips its final garbage collection (:mod:`data.quick_exit`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        skip_final_gc()
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            where = f"[rank {os.environ.get('RANK', '0')}] " if world > 1 else ""
            print(f"{where}error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(exc.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    return wrapper
