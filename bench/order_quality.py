"""``python -m bench.order_quality``: how mixed the trainer's train order is, against a
uniform shuffle (each epoch a fresh random permutation of the split).

The order is read from the loader's own order code, without decoding an image: global
step ``t`` of an epoch is the concatenation, over the canonical streams in order, of each
stream's chunk ``t`` (``ParquetImages._stream``, what the loader workers run; see
:mod:`data.loader`). Unless ``--check-steps 0``, the first steps of epoch 0 are also read
through the real :func:`data.make_train_loader` of every rank (its ``SPARKDP_RECORD_PATHS``
hook) and must be the same. The numbers, per epoch (``e >= 1`` for those that compare two
epochs), for the global batch (``B`` images from ``N`` in the split):

* ``distinct``: distinct images drawn in the epoch / ``N`` (a permutation: ``steps*B/N``);
  ``most draws``: the most times one image is drawn in an epoch (a permutation: 1);
  ``never drawn``: the fraction of the split not drawn in any of the epochs read;
* ``mates again``: of an image's batch-mates in epoch ``e``, the fraction that were also its
  batch-mates in epoch ``e-1`` (images drawn in both; uniform: about ``(B-1)/(N-1)``);
* ``row groups/batch``: distinct Parquet row groups in a batch (uniform: the expectation
  of ``B`` rows drawn without replacement, from the row-group sizes in the file footers);
* ``position change``: mean ``|p_e - p_{e-1}|`` of an image's step (first draw) as a
  fraction of the epoch (uniform: about 1/3).

The uniform column is simulated with the same ``N``, ``B``, steps and epochs; the
expected column is the closed form.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from data.errors import UserError, cli
from data.loader import RECORD_PATHS_ENV, ParquetImages
from data.split_reader import ParquetSplit, RowGroupReader
from data.order import DEFAULT_SHUFFLE_ROWS, check_streams, default_streams
from data.rank_loaders import make_train_loader, open_split, train_steps_per_epoch
from data.settings import build_parser as settings_parser
from data.settings import check_settings, setting

PROG = "python -m bench.order_quality"
DESCRIPTION = "How mixed the trainer's train order is, against a uniform shuffle."


@dataclass
class OrderOptions:
    data: str = setting(metavar="DIR", help="a data.convert output folder")
    batch_size: int = setting(32, minimum=1, metavar="N", help="images per rank and step (the trainer's --batch-size)")
    world_size: int = setting(1, minimum=1, metavar="W", help="ranks")
    workers: int = setting(2, minimum=0, metavar="N", help="loader workers per rank (the default streams follow)")
    streams: int | None = setting(None, minimum=1, metavar="C", doc="as the trainer: ranks x workers, as far as "
                                  "the global batch allows", help="canonical train streams (the trainer's --streams)")
    shuffle_rows: int = setting(DEFAULT_SHUFFLE_ROWS, minimum=1, metavar="N",
                                help="the loader's shuffle buffer, per stream (the trainer always uses the default)")
    epochs: int = setting(3, minimum=2, metavar="N", help="epochs read (from epoch 0)")
    seed: int = setting(0, metavar="N", help="the trainer's --seed")
    steps_per_epoch: int | None = setting(None, minimum=1, metavar="N", doc="one pass: rows // global batch",
                                          help="steps per epoch (the trainer's --steps-per-epoch)")
    split: str = setting("train", metavar="NAME", help="the split to read")
    check_steps: int = setting(2, minimum=0, metavar="N",
                               help="compare this many steps of epoch 0 with the real loaders' (0: no check)")
    out_json: str | None = setting(None, metavar="FILE", help="also write the numbers here")

    def __post_init__(self) -> None:
        check_settings(self)


def parse_args(argv: list[str] | None = None) -> OrderOptions:
    parser = settings_parser(OrderOptions, prog=PROG, description=DESCRIPTION)
    return OrderOptions(**vars(parser.parse_args(argv)))


@dataclass(frozen=True)
class Layout:
    """The split's rows: an id per path (files in name order, rows in file order) and
    each row's row group."""

    index: dict[str, int]
    row_group: np.ndarray  # row id -> row-group id
    sizes: np.ndarray      # row-group id -> rows


def read_layout(parquet: ParquetSplit) -> Layout:
    fragments = parquet.dataset().get_fragments()  # the manifest's files, in row order
    paths, groups, sizes = [], [], []
    for fragment in fragments:  # row groups are contiguous row ranges of each file
        for piece in fragment.split_by_row_group():
            column = piece.to_table(columns=["path"]).column("path").to_pylist()
            groups.append(np.full(len(column), len(sizes)))
            sizes.append(len(column))
            paths += column
    index = {p: i for i, p in enumerate(paths)}
    if len(index) != len(paths):
        raise UserError(f"{parquet.url}: paths are not unique; rows cannot be told apart")
    return Layout(index, np.concatenate(groups), np.array(sizes))


def loader_order(parquet, opts: OrderOptions, layout: Layout, streams: int, steps: int, epoch: int) -> np.ndarray:
    """Row ids of global step ``t`` (rows ``[t]``) of ``epoch``, as the trainer gets them."""
    dataset = ParquetImages(parquet, rank=0, world_size=opts.world_size, batch_size=opts.batch_size, image_size=1,
                            train=True, seed=opts.seed, epoch=epoch, shuffle_rows=opts.shuffle_rows,
                            streams=streams, workers=opts.workers)
    with RowGroupReader(parquet) as reader:
        sources = [dataset._stream(s, reader) for s in range(streams)]
        return np.array([[layout.index[p] for s in sources for p in next(s)[2]] for _ in range(steps)])


def check_loader(data: str, opts: OrderOptions, layout: Layout, streams: int, expected: np.ndarray) -> None:
    """The first ``check_steps`` global steps of epoch 0 through every rank's real loader."""
    steps = min(opts.check_steps, len(expected))
    with tempfile.TemporaryDirectory() as record:
        os.environ[RECORD_PATHS_ENV] = record
        try:
            for rank in range(opts.world_size):
                with make_train_loader(data, split=opts.split, batch_size=opts.batch_size, image_size=8,
                                       steps_per_epoch=steps, seed=opts.seed, workers=opts.workers,
                                       pin_memory=False, rank=rank, world_size=opts.world_size,
                                       streams=streams) as batches:
                    for _ in batches:
                        pass
        finally:
            del os.environ[RECORD_PATHS_ENV]
        parts: dict[tuple[int, int], list[str]] = {}
        for name in os.listdir(record):
            with open(os.path.join(record, name)) as f:
                for line in f:
                    try:  # a worker stopped while prefetching may leave its last line cut short
                        r = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    parts[(r["step"], r["stream"])] = r["paths"]
    got = np.array([[layout.index[p] for s in range(streams) for p in parts[(t, s)]] for t in range(steps)])
    if not np.array_equal(got, expected[:steps]):
        raise SystemExit("the loader's order differs from the order read here: bench.order_quality is out of date")


def uniform_order(n: int, batch: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(n)[:steps * batch].reshape(steps, batch)


def _pairs(order: np.ndarray, n: int) -> np.ndarray:
    """Every unordered pair of distinct images that share a batch, coded ``lo * n + hi``."""
    codes = []
    for batch in order:
        ids = np.unique(batch)
        lo, hi = np.triu_indices(len(ids), 1)
        codes.append(ids[lo] * n + ids[hi])
    return np.unique(np.concatenate(codes))


def _mates(pairs: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(pairs // n, minlength=n) + np.bincount(pairs % n, minlength=n)


def _first_step(order: np.ndarray, n: int) -> np.ndarray:
    """Each image's first step as a fraction of the epoch (step centre); NaN if not drawn."""
    steps = len(order)
    first = np.full(n, np.nan)
    for t in range(steps - 1, -1, -1):
        first[order[t]] = (t + 0.5) / steps
    return first


def measure(orders: list[np.ndarray], layout: Layout) -> dict:
    """The numbers of the module docstring for one order (one ``[steps, B]`` array per epoch)."""
    n = len(layout.row_group)
    epochs = []
    drawn_ever = np.zeros(n, bool)
    previous = None
    for order in orders:
        counts = np.bincount(order.ravel(), minlength=n)
        drawn_ever |= counts > 0
        pairs, first = _pairs(order, n), _first_step(order, n)
        e = {"distinct": float((counts > 0).mean()), "most_draws": int(counts.max()),
             "row_groups_per_batch": float(np.mean([len(np.unique(layout.row_group[b])) for b in order]))}
        if previous is not None:
            p_pairs, p_first = previous
            both = ~np.isnan(first) & ~np.isnan(p_first)
            again = _mates(np.intersect1d(pairs, p_pairs, assume_unique=True), n)[both] / _mates(pairs, n)[both]
            e["mates_again"] = float(again.mean())
            e["position_change"] = float(np.abs(first - p_first)[both].mean())
        epochs.append(e)
        previous = pairs, first
    mean = {k: float(np.mean([e[k] for e in epochs if k in e])) for k in epochs[-1]}
    mean["most_draws"] = max(e["most_draws"] for e in epochs)
    mean["never_drawn"] = float(1 - drawn_ever.mean())
    return {"mean": mean, "per_epoch": epochs}


def expected_uniform(layout: Layout, batch: int, steps: int, epochs: int) -> dict:
    """Closed forms for a uniform shuffle (each epoch a permutation, ``steps * batch`` rows taken)."""
    n = len(layout.row_group)
    log_c = lambda a, b: math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)  # noqa: E731
    missing = [math.exp(log_c(n - g, batch) - log_c(n, batch)) if n - g >= batch else 0.0 for g in layout.sizes]
    return {"distinct": steps * batch / n, "most_draws": 1, "never_drawn": (1 - steps * batch / n) ** epochs,
            "row_groups_per_batch": float(sum(1 - m for m in missing)),
            "mates_again": (batch - 1) / (n - 1), "position_change": (1 - 1 / steps ** 2) / 3}


ROWS = [("distinct", "distinct images drawn per epoch / split", "{:.3f}"),
        ("most_draws", "most draws of one image in an epoch", "{:d}"),
        ("never_drawn", "split never drawn in the epochs read", "{:.3f}"),
        ("mates_again", "batch-mates again next epoch", "{:.4f}"),
        ("row_groups_per_batch", "row groups per batch", "{:.2f}"),
        ("position_change", "position change between epochs", "{:.3f}")]


def table(columns: dict[str, dict]) -> str:
    head = f"{'':40s}" + "".join(f"{name:>20s}" for name in columns)
    lines = [head]
    for key, label, fmt in ROWS:
        lines.append(f"{label:40s}" + "".join(f"{fmt.format(c[key]):>20s}" for c in columns.values()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    opts = parse_args(argv)
    parquet = open_split(opts.data, opts.split)
    layout = read_layout(parquet)
    global_batch = opts.batch_size * opts.world_size
    streams = opts.streams or default_streams(global_batch, opts.world_size, opts.workers)
    check_streams(streams, global_batch, opts.world_size)
    steps = train_steps_per_epoch(parquet, opts.batch_size, opts.world_size, opts.steps_per_epoch)
    n = len(layout.row_group)
    if steps * global_batch > n:
        raise UserError("--steps-per-epoch takes more than one pass: a uniform shuffle is one permutation per epoch")
    orders = [loader_order(parquet, opts, layout, streams, steps, e) for e in range(opts.epochs)]
    checked = None
    if opts.check_steps and opts.shuffle_rows == DEFAULT_SHUFFLE_ROWS:  # the loaders only take the default
        check_loader(opts.data, opts, layout, streams, orders[0])
        checked = min(opts.check_steps, steps)
    rng = np.random.default_rng([opts.seed, 2024])
    result = {
        "options": asdict(opts), "rows": n, "row_groups": len(layout.sizes),
        "row_group_rows": [int(layout.sizes.min()), int(np.median(layout.sizes)), int(layout.sizes.max())],
        "global_batch": global_batch, "streams": streams, "steps_per_epoch": steps, "checked_steps": checked,
        "loader": measure(orders, layout),
        "uniform": measure([uniform_order(n, global_batch, steps, rng) for _ in range(opts.epochs)], layout),
        "expected": expected_uniform(layout, global_batch, steps, opts.epochs),
    }
    print(f"{opts.data} {opts.split}: {n} rows in {len(layout.sizes)} row groups of {result['row_group_rows'][0]}.."
          f"{result['row_group_rows'][2]} rows; global batch {global_batch} ({opts.world_size} rank(s) x "
          f"{opts.batch_size}) from {streams} streams, shuffle buffer {opts.shuffle_rows} rows/stream, "
          f"{steps} steps x {opts.epochs} epochs, seed {opts.seed}"
          + (f"; first {checked} steps checked against the loaders" if checked else ""))
    print(table({"loader": result["loader"]["mean"], "uniform (simulated)": result["uniform"]["mean"],
                 "uniform (expected)": result["expected"]}))
    if opts.out_json:
        with open(opts.out_json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    cli(main)(sys.argv[1:])
