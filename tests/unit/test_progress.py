"""data.progress: a redrawn bar on a terminal, plain lines in a log (no Spark, no training)."""
from __future__ import annotations

import io

import data.progress as progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_few_plain_lines_and_the_final_count(monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_SECONDS", 3600.0)
    log = io.StringIO()
    bar = progress.progress_bar(total=500, desc="epoch 1/1", unit="step", file=log, dynamic_ncols=True)
    for step in range(500):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2, lines
    assert lines[0].startswith("epoch 1/1: 0/500") and lines[1].startswith("epoch 1/1: 500/500")


def test_a_bar_that_leaves_nothing_on_a_terminal_still_ends_with_a_line_in_a_log():
    log = io.StringIO()
    bar = progress.progress_bar(total=0, desc="convert", unit="task", file=log, leave=False)
    bar.total, bar.n = 8, 8
    bar.close()
    assert log.getvalue().splitlines()[-1].startswith("convert: 8/8")


def test_a_terminal_gets_tqdms_redrawn_bar():
    screen = Terminal()
    with progress.progress_bar(total=3, file=screen) as bar:
        bar.update(3)
    assert "\r" in screen.getvalue() and "|" in screen.getvalue()
