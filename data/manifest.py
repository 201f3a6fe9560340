"""The converted data set's manifest: what a split folder holds, read at train time.

``<out>/manifest.json`` is the single source of truth for labels (class index = position
in ``classes``), row counts and the data files: it is written last and names every file
of every split, and readers read exactly those (:func:`split_files`), so files a killed
or earlier conversion left beside them are never read (object stores have no atomic
rename: the manifest is the commit). The trainer never re-parses paths for labels.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from data.errors import UserError
from data.object_store import arrow_url, is_s3, missing_bucket, problem

SCHEMA_VERSION = 2  # 2: each split names its data files (the manifest is the commit)
MANIFEST = "manifest.json"
REJECTED_CSV = "rejected.csv"
COLUMNS = ("image", "label", "path")


@dataclass
class SplitInfo:
    rows: int
    per_class: list[int]  # rows per label index
    files: int = 0
    row_groups: int = 0
    bytes: int = 0
    paths: list[str] = field(default_factory=list)  # its data files, relative to the data set, in row order


@dataclass
class Manifest:
    classes: list[str]
    splits: dict[str, SplitInfo]
    rejected: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    stats: dict[str, Any] = field(default_factory=dict)  # how the conversion went (not identity)

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
            "stats": self.stats,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def save(self, folder: str) -> str:
        path = os.path.join(folder, MANIFEST)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())
        return path

    @classmethod
    def load(cls, folder: str) -> "Manifest":
        """Read ``<folder>/manifest.json``: a local path or any URL pyarrow reads (file, s3/s3a, hdfs, gs)."""
        path, data = read_manifest_bytes(folder)
        try:
            raw = json.loads(data)
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
                stats=dict(raw.get("stats", {})),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is not a valid manifest ({exc})") from None

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise UserError(f"split {name!r} not in manifest (have: {', '.join(self.splits)})")
        return self.splits[name]


def split_url(data: str, split: str) -> str:
    """URL of a split folder for Petastorm: local paths become ``file://`` URLs."""
    if "://" in data:
        return data.rstrip("/") + "/" + split
    return "file://" + os.path.abspath(os.path.join(data, split))


def split_files(data: str, split: str, manifest: Manifest) -> list[str]:
    """URLs (``file://`` for a local folder) of the data files the manifest names for ``split``."""
    paths = manifest.split(split).paths
    if not paths:
        raise UserError(f"{data}: its manifest names no files for split {split!r}: convert the images again")
    base = data.rstrip("/") if "://" in data else "file://" + os.path.abspath(data)
    return [f"{base}/{p}" for p in paths]


def _check_found(folder: str, path: str, folder_found: bool, file_found: bool) -> None:
    if not folder_found:
        raise UserError(f"data folder not found: {folder}")
    if not file_found:
        raise UserError(f"{path} not found: is {folder} the --out of `python -m data.convert`?")


def read_manifest_bytes(folder: str) -> tuple[str, bytes]:
    """(where it is, contents) of ``<folder>/manifest.json``; one plain line if it is missing.

    Local paths are read directly; URLs (``file://`` included) through
    ``pyarrow.fs.FileSystem.from_uri``, so a data set on HDFS or S3 trains as it is.
    """
    if "://" not in folder:
        path = os.path.join(folder, MANIFEST)
        _check_found(folder, path, os.path.isdir(folder), os.path.isfile(path))
        with open(path, "rb") as f:
            return path, f.read()
    import pyarrow.fs as pafs

    path = folder.rstrip("/") + "/" + MANIFEST
    try:
        fs, base = pafs.FileSystem.from_uri(arrow_url(folder))
        where, found = fs.get_file_info([base, base.rstrip("/") + "/" + MANIFEST])
        bucket = missing_bucket(fs, base) if where.type != pafs.FileType.Directory and is_s3(folder) else None
        if bucket:
            raise UserError(f"data folder not found: {folder} (there is no bucket {bucket!r})")
        _check_found(folder, path, where.type == pafs.FileType.Directory, found.type == pafs.FileType.File)
        with fs.open_input_stream(found.path) as f:
            return path, f.read()
    except UserError:
        raise
    except Exception as exc:  # pyarrow raises several types (no libhdfs, no credentials, ...)
        raise UserError(f"cannot read {path}: {problem(exc)}") from None
