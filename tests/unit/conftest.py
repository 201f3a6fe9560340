"""tests/unit: the pure parts (order arithmetic, schedule, EMA, checkpoint parts, mixing,
splits, decode, settings), in seconds with ``make unit``. A test here starts no process and no Spark;
end-to-end tests, real processes and Spark included, live in tests/ above."""
from __future__ import annotations

import subprocess

import pytest


@pytest.fixture(autouse=True)
def _no_processes_and_no_spark(request, monkeypatch):
    if "spark" in request.fixturenames:
        pytest.fail("a unit test uses Spark: move it to tests/")

    def refuse(*args, **kwargs):
        raise AssertionError("a unit test starts a process: move it to tests/")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
