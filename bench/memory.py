"""Peak memory of a training run, per rank and per loader worker.

``python -m bench.memory --nproc 2 -- --data D --out R [trainer options]`` runs
``torchrun --standalone --nproc-per-node N -m trainer.train ...`` and samples
``/proc/<pid>/status`` of every process under it a few times a second: each process's
peak resident set (``VmHWM``, kept by the kernel, so no peak between samples is
missed), the largest anonymous part seen (``RssAnon``: not pages of files such as
shared libraries) and the largest private part seen (``smaps_rollup``: pages no other
process maps, so not the fork server's imports a worker shares until it writes them). Ranks are torchrun's
children; loader workers are the children of each rank's fork server (a fresh set for
every epoch and validation pass). Prints one line per kind and the JSON of every process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

KIB = 1024


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":", 1) for line in f if ":" in line)


def _kib(text: str) -> int:
    return int(text.split()[0])


def _private_kib(pid: int) -> int:
    """Resident pages only this process maps (not shared with its fork server or anyone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean:", "Private_Dirty:")))
    except OSError:
        return 0


def _children(pid: int) -> list[int]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return kids


def sample(root: int, seen: dict[int, dict]) -> None:
    """Update ``seen`` (pid -> kind, parent, peak and anonymous KiB) with every process under ``root``."""
    stack = [(root, None)]
    while stack:
        pid, parent = stack.pop()
        try:
            status = _status(pid)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            kids = _children(pid)
        except OSError:
            continue
        entry = seen.setdefault(pid, {"parent": parent, "cmd": cmd[:120], "hwm_kib": 0, "anon_kib": 0,
                                      "private_kib": 0})
        entry["hwm_kib"] = max(entry["hwm_kib"], _kib(status.get("VmHWM", "0")))
        entry["anon_kib"] = max(entry["anon_kib"], _kib(status.get("RssAnon", "0")))
        entry["private_kib"] = max(entry["private_kib"], _private_kib(pid))
        stack += [(k, pid) for k in kids]


def classify(root: int, seen: dict[int, dict]) -> None:
    """Each process's kind: torchrun, rank (its children), fork server (a rank's child running
    ``multiprocessing.forkserver``), loader worker (a fork server's child), other."""
    def kind(pid: int) -> str:
        parent = seen[pid]["parent"]
        if pid == root:
            return "torchrun"
        if parent == root:
            return "rank"
        if parent in seen and kind(parent) == "rank" and "forkserver" in seen[pid]["cmd"]:
            return "fork server"
        return "loader worker" if parent in seen and kind(parent) == "fork server" else "other"

    for pid, e in seen.items():
        e["kind"] = kind(pid)


def report(seen: dict[int, dict]) -> None:
    for name in ("rank", "fork server", "loader worker"):
        group = [e for e in seen.values() if e["kind"] == name]
        if group:
            print(f"{name:>13}: {len(group):3d} processes, peak RSS max {max(e['hwm_kib'] for e in group) / KIB:7.1f} "
                  f"MiB, anonymous max {max(e['anon_kib'] for e in group) / KIB:7.1f} MiB, private max "
                  f"{max(e['private_kib'] for e in group) / KIB:7.1f} MiB")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=2, help="ranks (default 2)")
    p.add_argument("--every", type=float, default=0.2, help="seconds between samples (default 0.2)")
    p.add_argument("--json", help="write every process's numbers here")
    p.add_argument("trainer_args", nargs=argparse.REMAINDER, help="-- then trainer.train's arguments")
    opts = p.parse_args(argv)
    args = opts.trainer_args[1:] if opts.trainer_args[:1] == ["--"] else opts.trainer_args
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                             str(opts.nproc), "-m", "trainer.train", *args])
    seen: dict[int, dict] = {}
    started = time.monotonic()
    while proc.poll() is None:
        sample(proc.pid, seen)
        time.sleep(opts.every)
    classify(proc.pid, seen)
    print(f"exit {proc.returncode} after {time.monotonic() - started:.0f} s")
    report(seen)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(seen, f, indent=1)
    raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
