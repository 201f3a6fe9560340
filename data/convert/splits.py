"""The split rule: deterministic, exactly stratified, independent of Spark partitioning.

Each image gets a key, ``sha1("<seed>:<relative path>")`` (first 16 hex digits). Within
one class the images are ranked by ``(key, path)``; the first ``round(n * train)`` go to
train, the next ``round(n * val)`` to val, the rest to test, where ``round`` rounds
halves up and ``n`` counts the class's readable images. The same files and seed give
the same splits on any machine and with any number of Spark partitions.
"""
from __future__ import annotations

import hashlib
import math

from data.errors import UserError

SPLIT_NAMES = ("train", "val", "test")  # in the order of a Fractions triple
Fractions = tuple[float, float, float]
DEFAULT_SPLIT: Fractions = (0.7, 0.2, 0.1)
TOLERANCE = 1e-6
KEY_HEX_DIGITS = 16


def parse_split(text: str | Fractions | list[float]) -> Fractions:
    """``"0.7,0.2,0.1"`` (or a sequence) -> (train, val, test); UserError if not 3
    non-negative numbers summing to 1."""
    if isinstance(text, str):
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise UserError(f"--split expects three numbers like 0.7,0.2,0.1, got {text!r}") from None
    else:
        values = [float(v) for v in text]
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values):
        raise UserError(f"--split expects three non-negative numbers (train,val,test), got {text!r}")
    if abs(sum(values) - 1.0) > TOLERANCE:
        raise UserError(f"--split fractions must sum to 1, got {text!r} (sum {sum(values):g})")
    return values[0], values[1], values[2]


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (2.5 -> 3), robust to float noise."""
    return math.floor(x + 0.5 + 1e-9)


def split_counts(n: int, fractions: Fractions) -> tuple[int, int, int]:
    """Rows of a class of ``n`` that go to (train, val, test)."""
    train = min(n, round_half_up(n * fractions[0]))
    val = min(n - train, round_half_up(n * fractions[1]))
    return train, val, n - train - val


def split_key(seed: int, relpath: str) -> str:
    """The ranking key of one image: depends only on the seed and its relative path."""
    return hashlib.sha1(f"{seed}:{relpath}".encode("utf-8")).hexdigest()[:KEY_HEX_DIGITS]


def renormalise_without_test(fractions: Fractions) -> Fractions:
    """Fractions for carving val out of an official train set: (t/(t+v), v/(t+v), 0)."""
    train, val, _ = fractions
    total = train + val
    if total <= 0:
        return 1.0, 0.0, 0.0
    return train / total, val / total, 0.0


def assign(relpaths: list[str], fractions: Fractions, seed: int) -> dict[str, list[str]]:
    """Split one class's paths by the rule (reference implementation, used in tests)."""
    ranked = sorted(relpaths, key=lambda p: (split_key(seed, p), p))
    train, val, _ = split_counts(len(ranked), fractions)
    return dict(zip(SPLIT_NAMES, (ranked[:train], ranked[train:train + val], ranked[train + val:])))
