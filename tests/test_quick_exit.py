"""A command's process skips its final garbage collection (data.quick_exit)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMAND = """
import atexit, gc
from data.errors import cli
atexit.register(lambda: print("frozen before the last collection:", gc.get_freeze_count() > 0))
before = atexit._ncallbacks()
cli(lambda: None)()
once = atexit._ncallbacks()
cli(lambda: None)()
print("handlers added:", once - before, atexit._ncallbacks() - once)
"""


def test_a_cli_main_freezes_the_heap_at_exit_once_per_process():
    out = subprocess.run([sys.executable, "-c", COMMAND], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "handlers added: 1 0" in out
    # The handler registered before the command's runs after the freeze (last in, first out).
    assert "frozen before the last collection: True" in out
