"""Tiny converted data sets shared by the loader and trainer tests.

Made once per test session with the real ``data.convert`` on the session's local Spark
and cached under pytest's session temp folder, so several test modules can ask for the
same one without converting twice (Spark starts only if a conversion is needed). Test
modules import the fixtures ``one_group`` and ``seven_groups`` from here.
"""
from __future__ import annotations

import os

import pytest

from data.manifest import MANIFEST, Manifest

CLASSES = 3
PER_CLASS = 40       # 3 x 40 images -> 84 train / 24 val / 12 test with the default 0.7/0.2/0.1 split
WIDTH, HEIGHT = 64, 48


def converted(request: pytest.FixtureRequest, files_per_split: int, seed: int) -> tuple[str, Manifest]:
    """``(data folder, manifest)`` of the synthetic images converted with these options."""
    base = request.getfixturevalue("tmp_path_factory").getbasetemp()
    out = os.path.join(base, "converted", f"files{files_per_split}_seed{seed}")
    if not os.path.isfile(os.path.join(out, MANIFEST)):
        from data.convert import convert
        from data.synthetic import generate

        images = os.path.join(base, "converted", "images")
        if not os.path.isdir(images):
            generate(images, classes=CLASSES, per_class=PER_CLASS, width=WIDTH, height=HEIGHT, seed=3,
                     progress=False)
        convert(images, out, files_per_split=files_per_split, seed=seed, spark=request.getfixturevalue("spark"),
                progress=False)
    return out, Manifest.load(out)


@pytest.fixture(scope="module")
def one_group(request) -> tuple[str, Manifest]:
    """Every split in a single Parquet row group: fewer row groups than ranks x workers."""
    data, manifest = converted(request, files_per_split=1, seed=7)
    assert {s.row_groups for s in manifest.splits.values()} == {1}
    return data, manifest


@pytest.fixture(scope="module")
def seven_groups(request) -> tuple[str, Manifest]:
    """Every split in 7 row groups: shards of unequal size for 2, 3 or 4 ranks. Its split
    seed differs from ``one_group``'s, so the two are different data sets (fingerprints)."""
    data, manifest = converted(request, files_per_split=7, seed=13)
    assert {s.row_groups for s in manifest.splits.values()} == {7}
    return data, manifest
