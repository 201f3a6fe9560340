"""A converted split as the loaders read it: checked once, then read by Petastorm one
shard pass at a time.

Each pass is a Petastorm :class:`~petastorm.reader.Reader` that runs its row-group
worker in the caller's thread (:class:`InlinePool`). Petastorm's own ``dummy`` pool does
too, but is fed by a ventilator thread three row groups ahead and sleeps 0.1 s whenever
it runs dry: on small row groups the loader's workers slept more than they decoded
(the reader alone gave 373 rows/s on 1 MiB row groups; inline, 6,964). Its ``thread``
and ``process`` pools would add threads or processes inside each loader worker, which
the loader already is.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from data.errors import UserError
from data.manifest import COLUMNS
from data.object_store import arrow_url, petastorm_filesystem, problem
from data.order import Rows, ShardPlan

# petastorm 0.12 calls pyarrow 14's legacy ParquetDataset API (the reason for the pin);
# the deprecation warnings it triggers say nothing a user can act on.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")


@dataclass(frozen=True)
class ParquetSplit:
    """A checked split: the Parquet folder's URL, its rows and its row groups."""

    url: str
    rows: int
    row_groups: int
    files: tuple[tuple[str, int], ...] = ()  # (file as pyarrow names it, its row groups), in listing order


def inspect_split(url: str, num_classes: int) -> ParquetSplit:
    """Check a split's schema and labels before training; one plain line if anything is off."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(arrow_url(url), format="parquet", exclude_invalid_files=False)
        missing = [c for c in ("image", "label") if c not in dataset.schema.names]
        if missing:
            raise UserError(f"{url} has no column(s) {', '.join(missing)}: was it written by data.convert?")
        files = tuple((f.path, f.metadata.num_row_groups) for f in dataset.get_fragments())
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
    return ParquetSplit(url, rows, sum(n for _, n in files), files)


class InlinePool:
    """A Petastorm worker pool that reads each row group in the caller's thread, on demand.

    The Reader lets its ventilator run ``workers_count`` + 2 row groups ahead; with this
    count it queues a whole one-epoch pass (in the pass's seeded order) when it runs,
    which :meth:`start` does synchronously instead of in a thread."""

    workers_count = 1 << 30

    def __init__(self) -> None:
        self._items: list[tuple[tuple, dict]] = []
        self._results: list = []
        self._worker = None

    def start(self, worker_class, worker_args=None, ventilator=None) -> None:
        self._worker = worker_class(0, self._results.append, worker_args)
        if ventilator is not None:
            ventilator._ventilate()  # one epoch: every row group, then it returns
        self._items.reverse()  # popped from the end

    def ventilate(self, *args, **kwargs) -> None:
        self._items.append((args, kwargs))

    def get_results(self):
        from petastorm.workers_pool import EmptyResultError

        while not self._results:
            if not self._items:
                raise EmptyResultError()
            args, kwargs = self._items.pop()
            self._worker.process(*args, **kwargs)
        return self._results.pop(0)

    def stop(self) -> None:
        self._items.clear()

    def join(self) -> None:
        pass

    @property
    def diagnostics(self) -> dict:
        return {}


def read_pass(split: ParquetSplit, plan: ShardPlan, seed: int | None,
              storage: dict[str, str] | None = None) -> Iterator[Rows]:
    """One pass over Petastorm shard ``plan`` of ``split``: (image bytes, labels, paths) per
    row group, after ``plan``'s row filter. ``seed`` shuffles the row-group order (None:
    file order). ``storage``: the AWS variables for an ``s3://`` split
    (:func:`data.object_store.s3_settings`)."""
    from petastorm.arrow_reader_worker import ArrowReaderWorker
    from petastorm.fs_utils import get_filesystem_and_path_or_paths
    from petastorm.reader import Reader

    fs, path = get_filesystem_and_path_or_paths(arrow_url(split.url),
                                                filesystem=petastorm_filesystem(split.url, storage))
    with Reader(fs, path, schema_fields=list(COLUMNS), worker_class=ArrowReaderWorker, reader_pool=InlinePool(),
                seed=seed, shuffle_row_groups=seed is not None, num_epochs=1, cur_shard=plan.cur_shard,
                shard_count=plan.shard_count, is_batched_reader=True) as reader:
        for chunk in reader:
            keep = plan.keep(chunk.path)
            rows = (chunk.image, chunk.label, chunk.path) if keep is None else \
                (chunk.image[keep], chunk.label[keep], chunk.path[keep])
            if len(rows[1]):
                yield rows[0], rows[1].astype(np.int64), rows[2]
