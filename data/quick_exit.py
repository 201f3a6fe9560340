"""Skip the interpreter's last garbage collections when a command's process ends.

A rank holds millions of objects (torch, torchvision, MLflow, Petastorm, Arrow); at exit
CPython walks them all in its final collections, which took ~1.9 s of each training
process's exit and ~1 s of its loader fork server's, for nothing: the memory goes back
to the system either way. ``gc.freeze()`` run as an exit handler puts every object out of
the collector's reach. Every exit handler still runs, and objects are still freed as their
modules are cleared; only objects kept alive by a reference cycle are left unfinalized,
which Python never promises at exit anyway (``__del__`` "is not guaranteed" to run then).
"""
from __future__ import annotations

import atexit
import gc

_registered = False


def skip_final_gc() -> None:
    """Register ``gc.freeze`` as an exit handler, once per process. Exit handlers run last
    registered first, so it runs after every handler registered later than this call."""
    global _registered
    if not _registered:
        atexit.register(gc.freeze)
        _registered = True
