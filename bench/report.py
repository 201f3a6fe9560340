"""The benchmark's outputs: per-path ratios, goal checks, a printed table, a bar chart PNG (matplotlib)."""
from __future__ import annotations

import json
import os

BASELINE = "raw_files"
CONVERT_CEILING = "convert_ceiling"
# (path or conversion, reference, minimum ratio): the benchmark's goals, checked in every run
# where both were measured.
GOALS = (("project", "raw_files", 1.0), ("project", "petastorm_converter", 2.0), ("project_resized", "raw_files", 1.8),
         ("project", "decode_ceiling_project", 0.9), ("project_resized", "decode_ceiling_resized", 0.85),
         ("data.convert", CONVERT_CEILING, 0.5))
# (path, minimum share of the machine's cores its processes keep busy): a loader that leaves cores idle starves.
CORE_GOALS = (("project", 0.925), ("project_resized", 0.925))
# (diagnostic, minimum): Petastorm as the loader reads it must outrun the decode many times over.
DIAGNOSTIC_GOALS = (("petastorm_reader_rows_per_s_one_process", 5000.0),)
# --against REV measures the project path at REV as the path "project@REV"; the goal against it:
AGAINST = "project@"
AGAINST_MINIMUM = 1.2
# On CUDA, training fed from Parquet: at least this share of the synthetic-input rate, at most this data wait.
TRAIN_GOAL = (0.95, 0.05)
DESCRIPTIONS = {
    "raw_files": "torchvision ImageFolder + DataLoader",
    "petastorm_converter": "make_spark_converter + make_torch_dataloader + TransformSpec",
    "project": "trainer loader (data.loader), CPU decode",
    "project_resized": "trainer loader on a --max-side 256 conversion",
    "project_gpu_decode": "trainer loader, JPEG bytes decoded on the GPU",
    "decode_ceiling": "cores x one core decoding + transforming (raw_files' transforms)",
    "decode_ceiling_project": "cores x one core running the project's decode",
    "decode_ceiling_resized": "the same on the --max-side 256 conversion's images",
    "decode_all_cores_resized": "the same, the cores decoding at once (what they deliver together)",
    CONVERT_CEILING: "cores x one core running data.convert's per-file check (full decode) on the same files",
}


def path_table(rates: dict[str, dict], cores: int) -> dict[str, dict]:
    """Add images/s per core and ratios to ``raw_files`` to each path's measurement."""
    base = rates.get(BASELINE, {}).get("images_per_s")
    out = {}
    for name, r in rates.items():
        ips = r["images_per_s"]
        out[name] = {"images_per_s": round(ips, 1), "images_per_s_per_core": round(ips / cores, 1),
                     f"ratio_to_{BASELINE}": round(ips / base, 3) if base else None,
                     "images_per_cpu_s": round(r["images_per_cpu_s"], 1),
                     "cpu_cores_used": round(ips / r["images_per_cpu_s"], 2) if r["images_per_cpu_s"] else None,
                     "rounds": [round(v, 1) for v in r.get("rounds", [])],
                     "description": _description(name)}
    return out


def _description(name: str) -> str:
    if name.startswith(AGAINST):
        return f"the project path at revision {name[len(AGAINST):]}, measured by that revision's own benchmark"
    return DESCRIPTIONS.get(name, "")


def goal_checks(paths: dict[str, dict], conversion: dict[str, dict] | None = None, cores: int | None = None,
                diagnostics: dict[str, float] | None = None) -> list[dict]:
    """Each goal whose sides were measured: for two paths (or a conversion and its ceiling)
    the images/s ratio, and the same ratio of images per CPU second (efficiency, steadier on
    a shared machine; None for conversions); for a path's cores, the share of ``cores`` it
    used; for a diagnostic, its value over the minimum. With ``--against REV``
    the project path is also held to ``AGAINST_MINIMUM`` x ``project@REV``."""
    measured = {**(conversion or {}), **paths}
    checks = []
    against = tuple(("project", name, AGAINST_MINIMUM) for name in paths if name.startswith(AGAINST))
    for name, ref, minimum in GOALS + against:
        if name in measured and ref in measured and measured[ref]["images_per_s"]:
            # judged on the ratio as printed (3 decimals), so the report never says 1.00x "NOT met" against 1x
            ratio = round(measured[name]["images_per_s"] / measured[ref]["images_per_s"], 3)
            cpu = measured[name].get("images_per_cpu_s"), measured[ref].get("images_per_cpu_s")
            checks.append({"goal": f"{name} >= {minimum:g}x {ref}", "kind": "ratio", "name": name, "reference": ref,
                           "minimum": minimum, "ratio": ratio, "met": ratio >= minimum,
                           "cpu_efficiency_ratio": round(cpu[0] / cpu[1], 3) if all(cpu) else None,
                           "round_ratios": _round_ratios(measured[name], measured[ref])})
    for name, minimum in CORE_GOALS:
        if cores and paths.get(name, {}).get("cpu_cores_used"):
            share = round(paths[name]["cpu_cores_used"] / cores, 3)
            checks.append({"goal": f"{name} keeps >= {minimum:g}x of {cores} cores busy", "kind": "cores", "name": name,
                           "reference": cores, "minimum": minimum, "ratio": share, "met": share >= minimum,
                           "cpu_efficiency_ratio": None})
    for name, minimum in DIAGNOSTIC_GOALS:
        if (diagnostics or {}).get(name):
            ratio = round(diagnostics[name] / minimum, 3)
            checks.append({"goal": f"{name} >= {minimum:g}", "kind": "diagnostic", "name": name, "reference": None,
                           "minimum": minimum, "ratio": ratio, "met": ratio >= 1, "cpu_efficiency_ratio": None})
    return checks


def _round_ratios(path: dict, ref: dict) -> list[float] | None:
    """The ratio round by round (the goal's ratio is of medians taken path by path): paths
    measured in one round share that round's background load, so these show how much of a
    goal's distance from its minimum is the machine moving between rounds."""
    rounds = path.get("rounds"), ref.get("rounds")
    if not all(rounds) or len(rounds[0]) != len(rounds[1]) or not all(rounds[1]):
        return None
    return [round(a / b, 3) for a, b in zip(*rounds)]


def mark_train_goal(steps: dict) -> dict:
    """On CUDA, add to each project path's training-step result whether it meets TRAIN_GOAL."""
    if steps["device"].startswith("cuda"):
        for name, t in steps["paths"].items():
            if name.startswith("project"):
                t["meets_goal"] = t["ratio_to_synthetic"] >= TRAIN_GOAL[0] and t["data_wait_fraction"] <= TRAIN_GOAL[1]
    return steps


def format_table(result: dict) -> str:
    """The printed summary: one line per path, then goals, conversion speed, train steps."""
    lines = [f"{'path':<24}{'images/s':>10}{'per core':>10}{'x raw_files':>13}{'per CPU-s':>11}{'cores used':>12}"
             "  description"]
    for name, p in result["paths"].items():
        ratio, used = p[f"ratio_to_{BASELINE}"], p["cpu_cores_used"]
        lines.append(f"{name:<24}{p['images_per_s']:>10.1f}{p['images_per_s_per_core']:>10.1f}"
                     f"{'' if ratio is None else f'{ratio:.2f}x':>13}{p['images_per_cpu_s']:>11.1f}"
                     f"{'' if used is None else f'{used:.2f}':>12}  {p['description']}")
    for g in result["goals"]:
        cpu = "" if g["cpu_efficiency_ratio"] is None else f"(per CPU-s: {g['cpu_efficiency_ratio']:.2f}x)"
        rounds = "" if not g.get("round_ratios") else "  rounds: " + " ".join(f"{r:.2f}" for r in g["round_ratios"])
        lines.append(f"goal {g['goal']:<44} {g['ratio']:.3f}x  {'met' if g['met'] else 'NOT met':<8}{cpu}{rounds}")
    if result.get("against"):
        v = result["against"]
        cpu = "" if v["ratio_per_cpu_s"] is None else f"  (per CPU-s: {v['ratio_per_cpu_s']:.2f}x)"
        ratio = "-" if v["ratio"] is None else f"{v['ratio']:.2f}x"
        lines.append(f"project vs {v['path']}: {ratio}{cpu}  ({v['commit'][:12]}, python -m {v['module']})")
    for key, value in result.get("diagnostics", {}).items():
        lines.append(f"{key:<40} {value}")
    for name, c in result.get("conversion", {}).items():
        if name == CONVERT_CEILING:
            lines.append(f"conversion {name:<29} {c['images_per_s']:8.1f} images/s ({c['images_per_cpu_s']:.1f} "
                         f"per CPU-s)  {c['description']}")
            continue
        cpu = f", {c['images_per_cpu_s']:.1f} per CPU-s" if c.get("images_per_cpu_s") else ""
        lines.append(f"conversion {name:<29} {c['images_per_s']:8.1f} images/s ({c['images']} images, "
                     f"{c['seconds']:.1f} s{', from its manifest' if c.get('from_manifest') else ''}{cpu})")
        if c.get("stage_seconds"):
            lines.append("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in c["stage_seconds"].items()))
    for name, t in result.get("train_step", {}).get("paths", {}).items():
        goal = ""
        if "meets_goal" in t:
            goal = f"  goal >= {TRAIN_GOAL[0]:g}x, wait <= {TRAIN_GOAL[1]:.0%}: {'met' if t['meets_goal'] else 'NOT met'}"
        lines.append(f"train step {name:<24} {t['images_per_s']:8.1f} images/s  "
                     f"{t['ratio_to_synthetic']:.2f}x synthetic  data wait {t['data_wait_fraction']:.1%}{goal}")
    return "\n".join(lines)


def bar_chart(paths: dict[str, dict], out_png: str, title: str) -> str:
    """A horizontal bar chart of images/s per path, drawn with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    names = list(paths)
    rates = [paths[n]["images_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * len(names)))
    bars = ax.barh(names, rates, color=["#2e86c1" if n.startswith("project") else "#969696" for n in names])
    ax.invert_yaxis()  # the first path on top
    for bar, name in zip(bars, names):
        ratio = paths[name][f"ratio_to_{BASELINE}"]
        ax.annotate(f"{bar.get_width():.0f} img/s" + ("" if ratio is None else f"  ({ratio:.2f}x raw)"),
                    (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_xlabel("images/s delivered")
    ax.set_xlim(0, max(rates, default=1.0) * 1.35 or 1.0)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, format="png", dpi=100)
    plt.close(fig)
    return out_png


def write_outputs(result: dict, out_json: str) -> str:
    """Write the JSON and the chart next to it; return the printed table."""
    folder = os.path.dirname(os.path.abspath(out_json))
    os.makedirs(folder, exist_ok=True)
    png = os.path.splitext(out_json)[0] + ".png"
    m = result["machine"]
    result["chart"] = bar_chart(result["paths"], png, f"delivered images/s, batch {result['settings']['batch_size']}, "
                                f"{result['settings']['workers']} workers, {m['cpu_cores']} cores ({m['cpu']})")
    with open(out_json, "w") as f:
        json.dump(result, f, indent=2)
    return format_table(result)
