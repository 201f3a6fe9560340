"""Images -> Parquet splits with Spark: ``python -m data.convert`` or ``from data.convert import convert``.

The driver lists the files (on disk or in S3: :mod:`~data.files`), or takes a
DataFrame (:mod:`~data.convert.frames`); Spark's Python workers read, decode and check
each image (:mod:`~data.images`, :mod:`~data.convert.rows`), the job splits each
class by a hash of the relative path or key (:mod:`~data.convert.splits`) and writes
``<out>/{train,val,test}/`` Parquet (columns image, label, path, width, height) in
planned row groups (:mod:`~data.convert.row_groups`), then ``<out>/manifest.json``, which
names every data file, and ``<out>/rejected.csv`` (:mod:`~data.convert.job`); on disk in
a staged folder renamed at the end, in S3 published by the manifest
(:mod:`~data.staging`). Input layouts: :mod:`~data.convert.layouts`.

Names resolve on first use, so importing one module (say ``data.images``) does
not load the Spark job.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from data.lazy import lazy_exports

_EXPORTS = {
    "convert": "data.convert.conversion",
    "summary": "data.convert.conversion",
    "main": "data.convert.cli",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from data.convert.cli import main
    from data.convert.conversion import convert, summary
