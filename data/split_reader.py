"""A converted split as the loaders read it: checked once, then read by Petastorm in row ranges.

Each read is a Petastorm :class:`~petastorm.reader.Reader` whose pool reads the row groups
it is given, in that order, in the caller's thread (:class:`InlinePool`): the train order
needs row ranges that cut across Petastorm's whole-row-group shards (:mod:`data.order`).
Petastorm's own ``dummy`` pool also reads in the caller's thread, but is fed by a
ventilator thread three row groups ahead and sleeps 0.1 s whenever it runs dry: on small
row groups the loader's workers slept more than they decoded (the reader alone gave 373
rows/s on 1 MiB row groups; inline, about 7,000). Its ``thread`` and ``process`` pools
would add threads or processes inside each loader worker, which the loader already is.
The Reader's worker and results reader are :mod:`data.row_group_worker`'s: the same row
groups read from files kept open, at about half the cost.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from data.errors import UserError
from data.manifest import COLUMNS, Manifest, split_files, split_url
from data.object_store import arrow_url, is_s3, petastorm_filesystem, problem, retrying
from data.order import Rows

# petastorm 0.12 calls pyarrow 14's legacy ParquetDataset API (the reason for the pin);
# the deprecation warnings it triggers say nothing a user can act on.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")


@dataclass(frozen=True)
class ParquetSplit:
    """A checked split: its URL (for messages), its rows and row groups, and the data files
    the manifest names (the only files read)."""

    url: str
    rows: int
    row_groups: int
    files: tuple[tuple[str, int], ...] = ()  # (file as pyarrow names it, its row groups), in row order
    group_rows: tuple[int, ...] = ()  # rows of each row group, files in row order: Petastorm's piece order
    sources: tuple[str, ...] = ()  # the files' URLs, in row order

    def dataset(self):
        """A pyarrow dataset over exactly :attr:`sources`."""
        return file_dataset(self.sources)


def file_dataset(sources: Sequence[str]):
    """A pyarrow Parquet dataset over exactly the files ``sources`` (URLs on one filesystem)."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    urls = [arrow_url(u) for u in sources]
    if urls[0].startswith("file://"):  # (from_uri refuses a path with a space in it)
        fs, first = pafs.LocalFileSystem(), urls[0][len("file://"):]
    else:
        fs, first = pafs.FileSystem.from_uri(urls[0])
    scheme = urls[0][:len(urls[0]) - len(first)]  # "s3://", "file://": the same for every file
    return ds.dataset([u[len(scheme):] for u in urls], filesystem=fs, format="parquet", exclude_invalid_files=False)


def open_split(data: str, split: str = "train", manifest: Manifest | None = None) -> ParquetSplit:
    """Check ``data``'s ``split`` (schema, labels against the manifest) once; the
    :class:`ParquetSplit` returned is what the loaders read.

    ``data`` is a local folder or a URL pyarrow and Petastorm read (``file://``,
    ``s3://``, ``hdfs://``); pass ``manifest`` when it is already loaded.
    """
    manifest = manifest or Manifest.load(data)
    return inspect_split(split_url(data, split), split_files(data, split, manifest), manifest.num_classes)


def inspect_split(url: str, sources: Sequence[str], num_classes: int) -> ParquetSplit:
    """Check the split at ``url`` made of the files ``sources`` (in row order) before
    training: schema and labels; one plain line if anything is off."""
    import pyarrow.compute as pc

    try:
        dataset = file_dataset(sources)
        missing = [c for c in ("image", "label") if c not in dataset.schema.names]
        if missing:
            raise UserError(f"{url} has no column(s) {', '.join(missing)}: was it written by data.convert?")
        metas = [(f.path, f.metadata) for f in dataset.get_fragments()]  # in the order given
        files = tuple((path, meta.num_row_groups) for path, meta in metas)
        group_rows = tuple(meta.row_group(i).num_rows for _, meta in metas for i in range(meta.num_row_groups))
        labels = dataset.to_table(columns=["label"]).column("label")
    except UserError:
        raise
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise UserError(f"cannot read Parquet split {url}: {problem(exc)}") from None
    rows = len(labels)
    if rows:
        lo, hi = pc.min(labels).as_py(), pc.max(labels).as_py()
        if lo is None or lo < 0 or hi >= num_classes:
            raise UserError(f"{url} has labels in [{lo}, {hi}] but the manifest has {num_classes} classes")
    return ParquetSplit(url, rows, len(group_rows), files, group_rows, tuple(sources))


class InlinePool:
    """A Petastorm worker pool that reads, in the caller's thread, the row groups queued on
    it (the Reader's own ventilator, and its seeded shuffle, are never started)."""

    workers_count = 1

    def __init__(self) -> None:
        self._todo: list[int] = []
        self._results: list = []
        self._worker = None

    def start(self, worker_class, worker_args=None, ventilator=None) -> None:
        self._worker = worker_class(0, self._results.append, worker_args)

    def queue(self, row_group: int) -> None:
        self._todo.append(row_group)

    def ventilate(self, *args, **kwargs) -> None:
        raise AssertionError("InlinePool reads the row groups queued on it")

    def get_results(self):
        from petastorm.workers_pool import EmptyResultError

        while not self._results:
            if not self._todo:
                raise EmptyResultError()
            self._worker.process(piece_index=self._todo.pop(0), worker_predicate=None,
                                 shuffle_row_drop_partition=(0, 1))
        return self._results.pop(0)

    def stop(self) -> None:
        self._todo.clear()

    def join(self) -> None:
        pass

    @property
    def diagnostics(self) -> dict:
        return {}


class RowGroupReader:
    """One Petastorm Reader over a split that reads the row groups asked of it, in the
    caller's thread; made once per loader worker and used for every pass and stream (a
    Reader costs ~12 ms to make: a pass of a small split's stream is ~200 rows).
    ``storage``: the AWS variables for an ``s3://`` split (:func:`data.object_store.s3_settings`)."""

    def __init__(self, split: ParquetSplit, storage: dict[str, str] | None = None):
        from petastorm.fs_utils import get_filesystem_and_path_or_paths
        from petastorm.reader import Reader

        from data.row_group_worker import RowGroupWorker

        self.split, self._pool = split, InlinePool()
        fs, paths = get_filesystem_and_path_or_paths([arrow_url(u) for u in split.sources],
                                                     filesystem=petastorm_filesystem(split.url, storage))
        # From an object store, a stalled read is retried (data.object_store's policy).
        self._retrying = retrying if is_s3(split.url) else lambda url, read: read()
        self._reader = self._retrying(split.url, lambda: Reader(
            fs, paths, schema_fields=list(COLUMNS), worker_class=RowGroupWorker, reader_pool=self._pool,
            shuffle_row_groups=False, num_epochs=1, is_batched_reader=True))

    def _file(self, group: int) -> str:
        """The file holding row group ``group``, as its URL (to name it in an error)."""
        for source, (_, groups) in zip(self.split.sources, self.split.files):
            if group < groups:
                return source
            group -= groups
        return self.split.url

    def _next(self, group: int):
        self._pool.queue(group)  # again, after a failed attempt: the pool dropped it
        return next(self._reader)

    def read(self, group: int) -> Rows:
        """Row group ``group`` (numbered as :attr:`ParquetSplit.group_rows`), all its rows."""
        rows = self._retrying(f"{self._file(group)} (row group {group})", lambda: self._next(group))
        if len(rows[1]) != self.split.group_rows[group]:
            raise UserError(f"{self.split.url}: row group {group} holds {len(rows[1])} rows, its footer said "
                            f"{self.split.group_rows[group]} (files changed since the split was checked?)")
        return rows

    def rows(self, ranges: list[tuple[int, int, int]]) -> Iterator[Rows]:
        """The rows of each ``(row group, start, stop)`` range (:func:`data.order.row_ranges`), in order."""
        for group, start, stop in ranges:
            images, labels, paths = self.read(group)
            yield images[start:stop], labels[start:stop], paths[start:stop]

    def close(self) -> None:
        self._reader.stop()
        self._reader.join()

    def __enter__(self) -> "RowGroupReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
