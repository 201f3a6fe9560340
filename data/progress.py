"""Progress bars that read well where nobody watches a terminal.

On a terminal, :func:`progress_bar` is tqdm's redrawn bar. Anywhere else (a log file, a
Spark executor, CI) redraws would pile up as ``\\r``-separated frames in one endless line,
so the bar becomes a plain line at most every :data:`PLAIN_SECONDS` seconds, and one more
with the final count when it closes.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

PLAIN_SECONDS = 30.0
PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def progress_bar(*, file=None, **kwargs) -> tqdm:
    """tqdm's bar (same arguments) on a terminal, plain lines elsewhere."""
    stream = file if file is not None else sys.stderr
    if kwargs.get("disable") or _is_terminal(stream):
        return tqdm(file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    kwargs.setdefault("bar_format", PLAIN_FORMAT)
    return _PlainBar(file=_Lines(stream), mininterval=PLAIN_SECONDS, **kwargs)


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class _Lines:
    """tqdm's output stream: each frame becomes one line, at most one per PLAIN_SECONDS
    unless ``force`` is set; the bar's clearing frames (blank after the ``\\r``) are dropped."""

    def __init__(self, stream):
        self.stream, self.force, self._last = stream, True, -PLAIN_SECONDS

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        now = time.monotonic()
        if line and (self.force or now - self._last >= PLAIN_SECONDS):
            self.stream.write(line + "\n")
            self.force, self._last = False, now

    def flush(self) -> None:
        self.stream.flush()


class _PlainBar(tqdm):
    def close(self) -> None:
        if not self.disable:
            self.fp.force = True  # the last line says where it ended
            if not self.leave and self.n:  # tqdm would only clear the bar
                self.fp.write(self.__str__())
        super().close()
