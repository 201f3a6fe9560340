"""The converted data set's manifest: what a split folder holds, read at train time.

``<out>/manifest.json`` is the single source of truth for labels (class index = position
in ``classes``) and row counts. The trainer never re-parses paths for labels.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from data.errors import UserError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REJECTED = "rejected.csv"
SPLITS = ("train", "val", "test")
COLUMNS = ("image", "label", "path")


@dataclass
class SplitInfo:
    rows: int
    per_class: list[int]  # rows per label index
    files: int = 0
    row_groups: int = 0
    bytes: int = 0


@dataclass
class Manifest:
    classes: list[str]
    splits: dict[str, SplitInfo]
    rejected: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def fingerprint(self) -> str:
        """Identity of the data set: classes and per-class rows of every split.

        Stable across re-conversions of the same input with the same options, and
        different whenever the labels or the split membership counts differ.
        """
        ident = {
            "classes": self.classes,
            "splits": {k: v.per_class for k, v in sorted(self.splits.items())},
            "seed": self.options.get("seed"),
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "fingerprint": self.fingerprint,
            "classes": self.classes,
            "splits": {k: vars(v) for k, v in self.splits.items()},
            "rejected": self.rejected,
            "options": self.options,
        }

    def save(self, folder: str) -> str:
        path = os.path.join(folder, MANIFEST)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, ensure_ascii=False)
            f.write("\n")
        return path

    @classmethod
    def load(cls, folder: str) -> "Manifest":
        path = os.path.join(strip_file_scheme(folder), MANIFEST)
        if not os.path.isdir(strip_file_scheme(folder)):
            raise UserError(f"data folder not found: {folder}")
        if not os.path.isfile(path):
            raise UserError(f"{path} not found: is {folder} the --out of `python -m data.convert`?")
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
            if raw.get("schema_version") != SCHEMA_VERSION:
                raise UserError(
                    f"{path} has schema version {raw.get('schema_version')}, this code reads "
                    f"{SCHEMA_VERSION}: convert the images again"
                )
            return cls(
                classes=list(raw["classes"]),
                splits={k: SplitInfo(**v) for k, v in raw["splits"].items()},
                rejected=int(raw.get("rejected", 0)),
                options=dict(raw.get("options", {})),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is not a valid manifest ({exc})") from None

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise UserError(f"split {name!r} not in manifest (have: {', '.join(self.splits)})")
        return self.splits[name]


def strip_file_scheme(url: str) -> str:
    """``file:///a/b`` -> ``/a/b``; other strings unchanged (manifests are read locally)."""
    return url[len("file://"):] if url.startswith("file://") else url


def split_url(data: str, split: str) -> str:
    """URL of a split folder for Petastorm: local paths become ``file://`` URLs."""
    if "://" in data:
        return data.rstrip("/") + "/" + split
    return "file://" + os.path.abspath(os.path.join(data, split))
