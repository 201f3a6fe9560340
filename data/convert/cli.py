"""``python -m data.convert --images DIR --out DIR [options]``: the command line of :func:`data.convert.convert`."""
from __future__ import annotations

import argparse

from data.convert import layouts
from data.convert.conversion import DEFAULT_SEED, convert, summary
from data.convert.images import DEFAULT_QUALITY
from data.convert.splits import DEFAULT_SPLIT
from data.errors import UserError, cli
from data.spark import parse_conf

DESCRIPTION = "Convert a folder of labelled images into Parquet splits with Spark."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, via @cli, instead of usage + exit 2
        raise UserError(f"{message} (see python -m data.convert --help)")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m data.convert", description=DESCRIPTION)
    p.add_argument("--images", required=True, metavar="DIR", help="folder of <class>/<image> files, or the Food-101 download")
    p.add_argument("--out", required=True, metavar="DIR", help="data set folder to create")
    p.add_argument("--layout", default="auto", choices=layouts.LAYOUTS)
    p.add_argument("--split", metavar="T,V,E", default=",".join(f"{v:g}" for v in DEFAULT_SPLIT), help="train,val,test fractions")
    p.add_argument("--seed", type=_int, metavar="N", default=DEFAULT_SEED, help="split seed")
    p.add_argument("--quality", type=_int, metavar="Q", default=DEFAULT_QUALITY, help="JPEG quality of re-encoded images")
    p.add_argument("--max-side", type=_int, metavar="N", default=None, help="shrink images whose longer side is larger")
    p.add_argument("--overwrite", action="store_true", help="replace an existing converted data set")
    p.add_argument("--master", metavar="URL", default="local[*]", help="Spark master (default local[*])")
    p.add_argument("--spark-conf", action="extend", nargs="+", default=[], metavar="K=V", help="Spark settings")
    p.add_argument("--files-per-split", type=_int, metavar="N", default=None, help="force N Parquet files per split")
    p.add_argument("--row-group-mb", type=float, metavar="M", default=None, help="force the Parquet row-group size (MB)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@cli
def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    manifest = convert(
        a.images, a.out, split=a.split, seed=a.seed, layout=a.layout, quality=a.quality, max_side=a.max_side,
        overwrite=a.overwrite, master=a.master, spark_conf=parse_conf(a.spark_conf),
        files_per_split=a.files_per_split, row_group_mb=a.row_group_mb, progress=not a.no_progress)
    print(summary(manifest, a.out), flush=True)

