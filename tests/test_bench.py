"""The input benchmark end to end on a tiny folder: real conversions, real loaders, real steps.

Only the shape and internal consistency of the results are checked, never speeds: the
goals are read from the benchmark's own printed ratios on a real data set.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from bench.run import main, parse_args, run
from data.synthetic import generate

CPU_PATHS = ("raw_files", "petastorm_converter", "project", "project_resized", "decode_ceiling", "decode_ceiling_project",
             "decode_ceiling_resized", "decode_all_cores_resized")


@pytest.fixture(scope="module")
def result(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    images = os.path.join(root, "images")
    generate(images, classes=3, per_class=8, width=96, height=72, seed=1, progress=False)
    args = parse_args(["--images", images, "--out-json", str(root / "bench.json"), "--seconds", "0.3",
                             "--rounds", "1", "--batch-size", "4", "--image-size", "32", "--workers", "1",
                             "--train-step", "--model", "resnet18"])
    run(args, spark=spark)
    with open(root / "bench.json") as f:
        return json.load(f), root


def test_every_cpu_path_has_positive_rates_and_consistent_ratios(result):
    res, _ = result
    paths = res["paths"]
    assert set(CPU_PATHS) <= set(paths)
    base = paths["raw_files"]["images_per_s"]
    cores = res["machine"]["cpu_cores"]
    for name in CPU_PATHS:
        p = paths[name]
        assert p["images_per_s"] > 0 and p["images_per_cpu_s"] > 0, name
        assert p["ratio_to_raw_files"] == pytest.approx(p["images_per_s"] / base, rel=1e-2, abs=1e-3), name
        assert p["images_per_s_per_core"] == pytest.approx(p["images_per_s"] / cores, rel=1e-2, abs=0.1), name
    assert res["diagnostics"]["project_resized_to_decode_all_cores_resized"] == pytest.approx(
        paths["project_resized"]["images_per_s"] / paths["decode_all_cores_resized"]["images_per_s"], rel=1e-2)
    measured = {**res["conversion"], **paths}
    assert {"project >= 0.9x decode_ceiling_project", "project_resized >= 0.85x decode_ceiling_resized",
            "data.convert >= 0.5x convert_ceiling"} <= {
        g["goal"] for g in res["goals"]}
    kinds = {g["kind"] for g in res["goals"]}
    assert {"ratio", "cores", "diagnostic"} <= kinds  # cores kept busy; the reader alone
    for goal in res["goals"]:
        name, ref, minimum = goal["name"], goal["reference"], goal["minimum"]
        if goal["kind"] == "ratio":
            expected = measured[name]["images_per_s"] / measured[ref]["images_per_s"]
            assert goal["met"] == (goal["ratio"] >= minimum)
            if ref in paths:  # conversions are timed once, not in rounds
                assert goal["round_ratios"] == pytest.approx(
                    [a / b for a, b in zip(paths[name]["rounds"], paths[ref]["rounds"])], rel=1e-2), goal["goal"]
        elif goal["kind"] == "cores":
            expected = paths[name]["cpu_cores_used"] / cores
            assert goal["met"] == (goal["ratio"] >= minimum)
        else:
            expected = res["diagnostics"][name] / minimum
            assert goal["met"] == (goal["ratio"] >= 1)
        assert goal["ratio"] == pytest.approx(expected, rel=1e-2, abs=1e-3), goal["goal"]


def test_goals_show_their_ratio_round_by_round():
    """A goal's ratio is of medians taken path by path; its rounds, each pairing the paths
    measured under the same load, are printed beside it."""
    from bench.report import format_table, goal_checks

    paths = {"project_resized": {"images_per_s": 3291.0, "rounds": [3180.0, 4453.0, 3291.0]},
             "decode_ceiling_resized": {"images_per_s": 4558.0, "rounds": [4558.0, 5035.0, 3572.0]}}
    goal, = goal_checks(paths)
    assert goal["ratio"] == 0.722 and not goal["met"]
    assert goal["round_ratios"] == [0.698, 0.884, 0.921]
    assert format_table({"paths": {}, "goals": [goal]}).endswith("0.722x  NOT met   rounds: 0.70 0.88 0.92")


def test_each_goal_ceiling_is_measured_in_halves_around_its_path_in_every_round():
    """The ceiling of a path's goal is timed just before and just after that path (the
    machine's load drifts over tens of seconds), its halves averaged; other ceilings whole."""
    from bench.measure import Rate, median_rates
    from bench.run import _round_order

    calls = []

    def fake(name, rates):
        rates = iter(rates)
        return lambda *seconds: calls.append((name, *seconds)) or Rate(next(rates), 1.0)

    measure = {"raw_files": fake("raw_files", [10, 20]), "project_resized": fake("project_resized", [30, 60])}
    ceilings = {"decode_ceiling": fake("decode_ceiling", [40, 80]),
                "decode_ceiling_project": fake("decode_ceiling_project", [50, 50]),
                "decode_ceiling_resized": fake("decode_ceiling_resized", [60, 100, 80, 120])}
    rates = median_rates(_round_order(measure, ceilings, 5.0), rounds=2)
    assert calls[:6] == [("raw_files",), ("decode_ceiling_resized", 2.5), ("project_resized",),
                         ("decode_ceiling_resized", 2.5), ("decode_ceiling", 5.0), ("decode_ceiling_project", 5.0)]
    assert calls[6:] == calls[:6]  # the second round, in the same order
    assert rates["decode_ceiling_resized"]["rounds"] == [80, 100]  # each round's halves averaged
    assert rates["decode_ceiling_resized"]["images_per_s"] == 90 and rates["project_resized"]["rounds"] == [30, 60]
    assert list(rates) == ["raw_files", "decode_ceiling_resized", "project_resized", "decode_ceiling",
                           "decode_ceiling_project"]


def test_conversion_speeds_chart_and_train_steps_are_reported(result):
    res, root = result
    conv = res["conversion"]
    assert {"data.convert", "data.convert --max-side 256", "make_spark_converter", "convert_ceiling"} <= set(conv)
    assert all(c["images"] == 24 and c["images_per_s"] > 0 for n, c in conv.items() if n != "convert_ceiling")
    ceiling = conv["convert_ceiling"]  # the same 24 files, decoded in memory beside the conversion
    assert ceiling["sample_files"] == 24 and ceiling["images_per_s"] > 0
    stages = conv["data.convert"]["stage_seconds"]
    total = conv["data.convert"]["seconds"] + 0.002  # three stage times, each rounded to the ms
    assert set(stages) == {"decode", "split", "write"} and 0 < sum(stages.values()) <= total
    assert os.path.isfile(res["chart"]) and res["chart"] == str(root / "bench.png")
    assert res["diagnostics"]["petastorm_reader_rows_per_s_one_process"] > 0
    steps = res["train_step"]["paths"]
    assert {"synthetic", "raw_files", "petastorm_converter", "project", "project_resized"} <= set(steps)
    assert steps["synthetic"]["ratio_to_synthetic"] == 1.0
    for name, s in steps.items():
        assert s["images_per_s"] > 0 and 0.0 <= s["data_wait_fraction"] <= 1.0, name


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--images", str(tmp_path / "missing"), "--out-json", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_given_parquet_sets_need_no_spark(tmp_path, monkeypatch):
    """A GPU node may have no Spark: with --data and --data-resized the project paths run without it."""
    from data import spark as spark_module
    from tests.parquet_sets import write_data_set

    def no_spark(*args, **kwargs):
        raise AssertionError("the benchmark started Spark although nothing needed converting")

    monkeypatch.setattr(spark_module, "spark_session", no_spark)
    for name in ("data", "data_256"):
        write_data_set(str(tmp_path / name), row_groups=2)
    args = parse_args(["--images", str(tmp_path), "--data", str(tmp_path / "data"), "--data-resized",
                             str(tmp_path / "data_256"), "--paths", "project,project_resized", "--out-json",
                             str(tmp_path / "out.json"), "--seconds", "0.2", "--rounds", "1", "--batch-size", "4",
                             "--image-size", "16", "--workers", "1"])
    res = run(args)
    assert set(res["paths"]) == {"project", "project_resized"} and res["conversion"] == {}
    assert all(p["images_per_s"] > 0 for p in res["paths"].values())
    with pytest.raises(AssertionError, match="started Spark"):  # and it does start Spark when it must convert
        run(parse_args(["--images", str(tmp_path), "--paths", "project", "--out-json",
                                    str(tmp_path / "out2.json")]))


def test_gpu_decode_path_loss_scaler_and_compile_rows_run_on_cpu(tmp_path, monkeypatch):
    """What tests/gpu/run.sh asks of the benchmark, at toy size on CPU: ``project_gpu_decode``
    named in --paths decodes on the CPU (one batch ahead), --precision brings the trainer's
    loss scaler (forced on here, as fp16 needs CUDA), --compile adds the synthetic_eager row."""
    import torch._dynamo

    from tests.parquet_sets import CLASSES, write_data_set
    from trainer.precision import FORCE_SCALER_ENV

    # Compiling takes minutes on a small CPU; tests/test_recipe.py compiles the trainer's model for real.
    monkeypatch.setattr(torch._dynamo.config, "disable", True)
    monkeypatch.setenv(FORCE_SCALER_ENV, "65536")
    for k in range(CLASSES):  # --images only names the classes here
        os.makedirs(tmp_path / "images" / f"class_{k}")
    write_data_set(str(tmp_path / "data"), row_groups=2)
    res = run(parse_args(["--images", str(tmp_path / "images"), "--data", str(tmp_path / "data"), "--paths",
                          "project_gpu_decode", "--train-step", "--compile", "--precision", "fp32", "--model",
                          "resnet18", "--out-json", str(tmp_path / "out.json"), "--seconds", "0.2", "--rounds", "1",
                          "--batch-size", "4", "--image-size", "16", "--workers", "1"]))
    steps = res["train_step"]
    assert (steps["precision"], steps["compiled"], steps["loss_scaling"]) == ("fp32", True, True)
    assert set(steps["paths"]) == {"synthetic", "synthetic_eager", "project_gpu_decode"}
    assert res["paths"]["project_gpu_decode"]["images_per_s"] > 0
    assert all(s["images_per_s"] > 0 and s["steps"] >= 2 for s in steps["paths"].values())


def _git_checkout() -> bool:
    from tests.procs import ROOT

    try:
        top = subprocess.run(["git", "-C", ROOT, "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return top.returncode == 0 and os.path.realpath(top.stdout.strip()) == os.path.realpath(ROOT)


@pytest.mark.skipif(not _git_checkout(), reason="--against checks revisions out of the git checkout the tests run from")
def test_against_a_revision_measures_its_project_path_in_the_same_rounds(tmp_path):
    """--against HEAD: this checkout's last commit, checked out in a worktree and measured by its
    own benchmark (its own conversion, with its own Spark, and its loader) as one more entry of
    the rounds. This side reads a Parquet set written without Spark, to keep the test short."""
    from tests.parquet_sets import write_data_set
    from tests.procs import ROOT

    images = str(tmp_path / "images")
    generate(images, classes=3, per_class=8, width=96, height=72, seed=1, progress=False)
    write_data_set(str(tmp_path / "data"), row_groups=2)
    res = run(parse_args(["--images", images, "--data", str(tmp_path / "data"), "--data-resized", str(tmp_path / "data"),
                          "--out-json", str(tmp_path / "out.json"), "--paths", "project,project_resized",
                          "--against", "HEAD", "--seconds", "1",
                          "--rounds", "1", "--batch-size", "4", "--image-size", "32", "--workers", "1",
                          "--work", str(tmp_path / "work")]))
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    old, new = res["paths"]["project@HEAD"], res["paths"]["project"]
    assert old["images_per_s"] > 0 and old["images_per_cpu_s"] > 0 and len(old["rounds"]) == 1
    assert list(res["paths"]) == ["project", "project@HEAD", "project_resized"]  # timed right after project
    assert res["against"]["commit"] == head and res["against"]["rev"] == "HEAD"
    assert res["against"]["ratio"] == pytest.approx(new["images_per_s"] / old["images_per_s"], rel=1e-2)
    assert res["against"]["ratio_per_cpu_s"] > 0
    assert "project >= 1.2x project@HEAD" in {g["goal"] for g in res["goals"]}
    with open(tmp_path / "out.json") as f:
        assert json.load(f)["against"] == res["against"]
    # the worktree and its conversion are gone, from the folder and from git's list
    assert not [p for p in os.listdir(tmp_path / "work") if p.startswith("against-")]
    listed = subprocess.run(["git", "-C", ROOT, "worktree", "list"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in listed


def test_against_an_unknown_revision_or_outside_git_is_one_line_error(tmp_path, capsys):
    from bench.against import resolve
    from data.errors import UserError

    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["--images", str(images), "--out-json", str(tmp_path / "x.json"), "--paths", "project",
              "--against", "no-such-revision-7f3a"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.count("\n") == 0
    assert err.startswith("error: --against no-such-revision-7f3a: no such revision")
    with pytest.raises(UserError, match="needs a git checkout"):
        resolve("HEAD", repo=str(tmp_path))
