"""``--against REV``: another revision's ``project`` path, measured by that revision's own benchmark.

The revision is checked out (detached) in a git worktree inside the run's work folder and its
own benchmark (``python -m bench``, or ``python -m data.bench`` in the older layout) runs there
as a subprocess, with this Python, on the same images, workers, batch and image size, one
round per call: each call is one more entry of this run's interleaved rounds. The first call
converts the images with that revision's own ``data.convert`` (before its timing starts),
later calls reuse that conversion. The worktree and its conversion are removed at the end.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterator

from bench.measure import Rate
from bench.options import BenchOptions
from bench.report import AGAINST
from data.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout that holds this package
# (file that marks the layout, module to run), newest layout first
LAYOUTS = (("bench/__main__.py", "bench"), ("data/bench.py", "data.bench"))


@dataclass(frozen=True)
class Revision:
    """A revision to measure against: as given, its full commit and its benchmark's module."""
    rev: str
    commit: str
    module: str

    @property
    def path(self) -> str:
        """Its entry in the paths table, e.g. ``project@9d65406``."""
        return f"{AGAINST}{self.rev}"


def _git(repo: str, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("--against needs git, and there is no git command here") from None


def resolve(rev: str, repo: str = REPO) -> Revision:
    """The commit ``rev`` names in ``repo`` and the benchmark module it has; a UserError if
    ``repo`` is not a git checkout, ``rev`` names no commit or the commit has no benchmark."""
    top = _git(repo, "rev-parse", "--show-toplevel")
    if top.returncode or os.path.realpath(top.stdout.strip()) != os.path.realpath(repo):
        raise UserError(f"--against needs a git checkout, and {repo} is not one")
    commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if commit.returncode:
        raise UserError(f"--against {rev}: no such revision in {repo}")
    sha = commit.stdout.strip()
    module = next((m for marker, m in LAYOUTS if _git(repo, "cat-file", "-e", f"{sha}:{marker}").returncode == 0),
                  None)
    if module is None:
        raise UserError(f"--against {rev}: that revision has no benchmark ({' or '.join(m for m, _ in LAYOUTS)})")
    return Revision(rev, sha, module)


@contextlib.contextmanager
def checked_out(revision: Revision | None, work: str, repo: str = REPO) -> Iterator[str | None]:
    """``revision`` in a detached worktree under ``work`` (None: nothing), removed afterwards."""
    if revision is None:
        yield None
        return
    tree = os.path.join(os.path.abspath(work), f"against-{revision.commit[:12]}")
    _remove(tree, repo)  # left by a run that was killed, with --work kept (--force: its registration too)
    added = _git(repo, "worktree", "add", "--force", "--detach", tree, revision.commit)
    if added.returncode:
        raise UserError(f"--against {revision.rev}: git worktree add failed: {_last_line(added.stderr)}")
    try:
        yield tree
    finally:
        _remove(tree, repo)


def _remove(tree: str, repo: str) -> None:
    _git(repo, "worktree", "remove", "--force", tree)
    shutil.rmtree(tree, ignore_errors=True)
    shutil.rmtree(f"{tree}.work", ignore_errors=True)


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "(no message)")


class Measurement:
    """One call: one round of the revision's ``project`` path, in its worktree ``tree``."""

    def __init__(self, revision: Revision, tree: str, opts: BenchOptions, log=lambda _: None) -> None:
        self.revision, self.tree, self.opts, self.log = revision, tree, opts, log
        self.work = f"{tree}.work"  # its conversion and outputs, beside the worktree
        self.calls = 0

    def __call__(self) -> Rate:
        self.calls += 1
        opts, converted = self.opts, os.path.join(self.work, "data")
        if self.calls == 1:
            self.log(f"{self.revision.path}: its benchmark converts the images first (not timed) ...")
        out = os.path.join(self.work, f"round-{self.calls}.json")
        source = ["--data", converted] if os.path.isfile(os.path.join(converted, "manifest.json")) else [
            "--work", self.work]
        cmd = [sys.executable, "-m", self.revision.module, "--images", os.path.abspath(opts.images), "--out-json", out,
               *source, "--paths", "project", "--rounds", "1", "--seconds", f"{opts.seconds:g}",
               "--workers", str(opts.workers), "--batch-size", str(opts.batch_size), "--image-size", str(opts.image_size)]
        done = subprocess.run(cmd, cwd=self.tree, env={**os.environ, "PYTHONPATH": self.tree},
                              capture_output=True, text=True)
        if done.returncode:
            raise UserError(f"--against {self.revision.rev}: its benchmark failed (exit {done.returncode}): "
                            f"{_last_line(done.stderr)}")
        with open(out) as f:
            project = json.load(f)["paths"].get("project")
        if not project:
            raise UserError(f"--against {self.revision.rev}: its benchmark reported no project path")
        return Rate(project["images_per_s"], project.get("images_per_cpu_s") or 0.0)


def summary(revision: Revision, paths: dict[str, dict]) -> dict:
    """``project`` against the revision's: images/s and images per CPU second ratios."""
    new, old = paths["project"], paths[revision.path]
    return {"rev": revision.rev, "commit": revision.commit, "module": revision.module, "path": revision.path,
            "ratio": round(new["images_per_s"] / old["images_per_s"], 3) if old["images_per_s"] else None,
            "ratio_per_cpu_s": round(new["images_per_cpu_s"] / old["images_per_cpu_s"], 3)
            if old["images_per_cpu_s"] else None}
