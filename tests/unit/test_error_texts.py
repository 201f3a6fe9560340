"""The error texts docs/failures.md quotes are texts the code prints."""
from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLACEHOLDER = re.compile(r"\.\.\.|\[\.\.\]|\bN\b|s3://")


def quoted_errors() -> list[str]:
    """The code spans of the first column of the 'message starts with' table."""
    text = (ROOT / "docs" / "failures.md").read_text()
    table = text.split("| message starts with |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1] for line in table.splitlines()[2:] if line.startswith("|")]
    return [span for row in rows for span in re.findall(r"`([^`]+)`", row)]


def test_every_quoted_error_text_is_in_the_code():
    source = "\n".join(p.read_text() for folder in ("data", "trainer", "launch") for p in (ROOT / folder).rglob("*.py"))
    source = re.sub(r"\"\s*\n\s*f?\"", "", source)  # a message's string literals continued on the next line
    quoted = quoted_errors()
    assert len(quoted) >= 10
    missing = [(span, part) for span in quoted for part in PLACEHOLDER.split(span)
               if len(part.strip(" .:()")) >= 4 and part.strip(" .:(") not in source]
    assert not missing, missing
