"""A command's progress in a log (stderr is a pipe): plain lines, not redrawn frames."""
from __future__ import annotations

import subprocess
import sys


def test_a_command_writing_to_a_pipe_logs_lines_not_frames(tmp_path):
    result = subprocess.run([sys.executable, "-m", "data.synthetic", "--out", str(tmp_path / "img"), "--classes", "2",
                             "--per-class", "30", "--size", "32x24"], capture_output=True, text=True, check=True)
    assert "\r" not in result.stderr and result.stderr.splitlines()[-1].startswith("synthetic: 60/60"), result.stderr
