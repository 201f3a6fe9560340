"""``python -m data.convert --images DIR --out DIR [options]``: the command line of :func:`data.convert.convert`.

The options are :class:`~data.convert.conversion.ConvertOptions`' settings; a bad one is
one ``error:`` line, like every other user error.
"""
from __future__ import annotations

import argparse

from data.convert.conversion import ConvertOptions, run, summary
from data.errors import UserError, cli
from data.settings import build_parser as settings_parser

PROG = "python -m data.convert"
DESCRIPTION = "Convert a folder of labelled images into Parquet splits with Spark."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, via @cli, instead of usage + exit 2
        raise UserError(f"{message} (see {PROG} --help)")


def build_parser() -> argparse.ArgumentParser:
    return settings_parser(ConvertOptions, prog=PROG, description=DESCRIPTION, parser_class=_Parser)


@cli
def main(argv: list[str] | None = None) -> None:
    opts = ConvertOptions(**vars(build_parser().parse_args(argv)))
    print(summary(run(opts), opts.out), flush=True)
