"""Settings declared once: the parsers, the checks and the documented option tables agree.

Each command's options are dataclass fields (:mod:`data.settings`); these tests hold the
README tables (option names and defaults) to the declarations, and check that the
derived parsers give exactly the declared defaults and refuse what the declarations
refuse, with one line naming the option.
"""
from __future__ import annotations

import os
import re

import pytest

from bench.options import BenchOptions
from bench.options import build_parser as bench_parser
from data.convert.cli import build_parser as convert_parser
from data.convert.conversion import ConvertOptions
from data.errors import UserError
from data.settings import declared, documented_default
from launch.batch_predict import PredictOptions
from tests.procs import ROOT
from trainer.config import TrainConfig, parse_args

DOCUMENTED = [  # (document, heading above its option table, the settings it documents)
    ("README.md", "## Training", TrainConfig),
    ("README.md", "## Converting images", ConvertOptions),
    ("bench/README.md", "## Options", BenchOptions),
    ("README.md", "## Using the model", PredictOptions),
]


def option_table(document: str, heading: str) -> dict[str, str]:
    """``{option: default cell}`` of the first Markdown table after ``heading`` in ``document``."""
    with open(os.path.join(ROOT, document), encoding="utf-8") as f:
        lines = f.read().split(f"\n{heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        table[re.search(r"--[a-z0-9-]+", cells[0]).group(0)] = cells[1].replace("`", "")
    return table


@pytest.mark.parametrize("document,heading,settings", DOCUMENTED, ids=[d[2].__name__ for d in DOCUMENTED])
def test_documented_option_tables_match_the_declared_settings(document, heading, settings):
    declared_defaults = {s.option: documented_default(s) for s in declared(settings)}
    assert option_table(document, heading) == declared_defaults


@pytest.mark.parametrize("parse,settings,required", [
    (lambda argv: vars(parse_args(argv)), TrainConfig, {"data": "d", "out": "o"}),
    (lambda argv: vars(convert_parser().parse_args(argv)), ConvertOptions, {"images": "i", "out": "o"}),
    (lambda argv: vars(bench_parser().parse_args(argv)), BenchOptions, {"images": "i", "out_json": "o"}),
], ids=["train", "convert", "bench"])
def test_parsers_give_the_declared_defaults(parse, settings, required):
    argv = [arg for name, value in required.items() for arg in (f"--{name.replace('_', '-')}", value)]
    assert vars(settings(**parse(argv))) == vars(settings(**required))


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--label-smoothing", "1"], "--label-smoothing must be >= 0 and < 1, got 1.0"),
    (["--workers", "-1"], "--workers must be >= 0, got -1"),
    (["--val-every", "0"], "--val-every must be >= 1, got 0"),
])
def test_out_of_bounds_settings_are_one_line_errors(argv, message):
    with pytest.raises(UserError) as exc:
        parse_args(["--data", "d", "--out", "o", *argv])
    assert str(exc.value) == message


def test_settings_are_checked_from_python_too():
    with pytest.raises(UserError, match="--optimizer must be one of sgd, adamw, not 'lamb'"):
        TrainConfig(data="d", out="o", optimizer="lamb")
    with pytest.raises(UserError, match="--quality must be from 1 to 100, got 101"):
        ConvertOptions(images="i", out="o", quality=101)
    with pytest.raises(UserError, match="--batch-size must be an integer, got 2.5"):
        BenchOptions(images="i", out_json="o", batch_size=2.5)
    assert ConvertOptions(images="i", out="o", spark_conf=["a=1", "b=c=d"]).spark_conf == {"a": "1", "b": "c=d"}
