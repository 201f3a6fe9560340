"""Checkpoints: everything needed to continue as if never stopped, written atomically.

A checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``) of a few
parts, each the ``state_dict()`` of the object that owns it and restored by that object's
``load_state_dict()``::

    {"format": 2, "model": ..., "optimizer": ..., "scheduler": ..., "scaler": ...,
     "ema": ... (only with --model-ema), "progress": ..., "run": ..., "rng": ...}

``progress`` is ``trainer.train.Progress`` (step, epoch, position in it, best top-1,
skipped steps), ``run`` a :class:`RunIdentity` (what the run was made for and how its
samples were ordered), ``ema`` a ``trainer.ema.ModelEma`` (weights and update count),
``rng`` :class:`RngState`. Weights are the unwrapped model's (no ``module.`` prefix).
Writes go to a temp file in the same folder, are fsynced, then renamed over the target,
so a crash mid-write leaves the previous file intact and never a partial ``last.pt``.

The run keeps its last two ``last.pt`` (the one before is ``previous.pt``), not one
verified after each write: a check after writing catches a bad write, but not what
happens to the file later (a truncated copy, a disk error, another file put in its
place), and re-reading a multi-GB checkpoint after every write costs a full load. With
two, ``--resume auto`` falls back to the newest one that loads (:func:`load_resume`).
The cost is one more last.pt-sized file on disk (during a write, three: the temp file too).
"""
from __future__ import annotations

import errno
import glob
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch

from data.settings import trajectory_settings
from data.errors import UserError

FORMAT_VERSION = 2  # the layout of parts above; a file of another format is refused in one line
FORMAT = "format"
# The parts, by name.
MODEL = "model"
OPTIMIZER = "optimizer"
SCHEDULER = "scheduler"
SCALER = "scaler"
EMA = "ema"
PROGRESS = "progress"
RUN = "run"
RNG = "rng"

LAST = "last.pt"
PREVIOUS = "previous.pt"  # the last.pt before the current one
BEST = "best.pt"


class OtherFormat(UserError):
    """A checkpoint of this trainer in another format: an older one is not half loaded,
    and ``--resume auto`` does not fall back past it (every file of its run has that format)."""


def checkpoint_dir(run_dir: str) -> str:
    """Where a run's checkpoints live: ``RUN_DIR/checkpoints``."""
    return os.path.join(run_dir, "checkpoints")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _free_bytes(folder: str) -> int | None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def state_bytes(value: Any) -> int:
    """About what ``torch.save(value)`` writes: the bytes of the tensors' storages (each
    once), which is nearly all of a checkpoint."""
    seen: dict[int, int] = {}

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            storage = v.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(v, dict):
            for item in v.values():
                walk(item)
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item)

    walk(value)
    return sum(seen.values())


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def save_checkpoint(state: dict[str, Any], path: str, previous: str | None = None) -> str:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename, fsync folder).
    With ``previous``, the file ``path`` held until now is kept there (renamed, just
    before the new one takes its place).

    A full disk or an unwritable folder is a UserError naming the folder (and, when full,
    the bytes the checkpoint needs); ``path`` is left as it was and the temp file is removed.
    Temp files of earlier writes that were killed midway (``.NAME.*.tmp``) are removed
    first: they are never read.
    """
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(os.path.join(glob.escape(folder), glob.escape(prefix) + "*.tmp")):
            os.unlink(stale)
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            torch.save({FORMAT: FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and os.path.isfile(path):
            os.replace(path, previous)  # a crash before the next rename leaves previous: load_resume takes it
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
            tmp = None
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        free, need = _free_bytes(folder), state_bytes(state)
        full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or \
            (isinstance(exc, RuntimeError) and free is not None and free < need)  # its text hides the cause
        if full:
            reason = (f"No space left on device in {folder}: the checkpoint needs about {_mib(need)}, "
                      f"{_mib(free or 0)} are free")
        raise UserError(f"cannot write checkpoint {path}: {reason}; the previous checkpoint is unchanged: "
                        "free space (or fix the folder) and rerun with --resume auto") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint on CPU; a missing or unreadable file is a plain UserError."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read checkpoint {path} ({os.path.getsize(path)} bytes; truncated, corrupted "
                        f"or not a checkpoint): {reason}") from None
    if not isinstance(state, dict) or MODEL not in state or not isinstance(state.get(FORMAT), int):
        raise UserError(f"{path} is not a checkpoint written by this trainer")
    if state[FORMAT] != FORMAT_VERSION:
        age = "an older" if state[FORMAT] < FORMAT_VERSION else "a newer"
        raise OtherFormat(f"{path} is from {age} version of the trainer (checkpoint format {state[FORMAT]}, this "
                          f"version reads {FORMAT_VERSION}): retrain, or load it with the version that wrote it")
    return state


def find_resume(run_dir: str, resume: str | None) -> str | None:
    """``auto`` -> RUN_DIR/checkpoints/last.pt when it exists (else start fresh); a path -> itself."""
    if not resume:
        return None
    if resume == "auto":
        last = os.path.join(checkpoint_dir(run_dir), LAST)
        return last if os.path.isfile(last) else None
    if not os.path.isfile(resume):
        raise UserError(f"--resume checkpoint not found: {resume}")
    return resume


def find_latest_checkpoint(run_dir: str) -> str | None:
    """The checkpoint a resumed run continues from (``RUN_DIR/checkpoints/last.pt``), or None."""
    return find_resume(run_dir, "auto")


def load_resume(run_dir: str, resume: str | None) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """``(path, state, note)`` of the checkpoint to continue from (``(None, None, None)``: start fresh).

    ``auto``: ``last.pt``; if that does not load, the newest (by time written) of
    ``previous.pt`` and ``best.pt`` that does, with ``note`` saying what was skipped and
    what is used instead. None loading is a UserError. A path given is loaded as it is."""
    path = find_resume(run_dir, resume)
    if resume != "auto":
        return path, load_checkpoint(path) if path else None, None
    folder = checkpoint_dir(run_dir)
    others = sorted((p for p in (os.path.join(folder, n) for n in (PREVIOUS, BEST)) if os.path.isfile(p)),
                    key=os.path.getmtime, reverse=True)
    candidates = ([path] if path else []) + others
    skipped = [] if path or not others else [f"{os.path.join(folder, LAST)} is missing"]
    for candidate in candidates:
        try:
            state = load_checkpoint(candidate)
        except OtherFormat:
            raise
        except UserError as exc:
            skipped.append(str(exc))
            continue
        note = f"{'; '.join(skipped)}: resuming from {candidate}, the newest checkpoint that loads" if skipped else None
        return candidate, state, note
    if skipped:
        raise UserError(f"no checkpoint in {folder} loads ({'; '.join(skipped)}): start a new --out, or pass "
                        "--resume with a good file")
    return None, None, None


@dataclass
class RunIdentity:
    """The ``run`` part: what a run was made for (data set, classes, model, config) and what
    orders its samples (global batch, streams, micro-batch); a model-only checkpoint
    (``trainer.classify.model_only``) fills the model name, classes and image size only."""
    config: dict = field(default_factory=dict)   # TrainConfig.to_dict()
    classes: list = field(default_factory=list)
    data_fingerprint: str | None = None
    model_name: str | None = None
    world_size: int | None = None      # ranks that trained it
    global_batch: int | None = None    # images per optimizer step, all ranks
    streams: int | None = None         # canonical train streams (data.loader): with global_batch, the sample order
    micro_batch: int | None = None     # images per forward pass on a rank (BatchNorm statistics, MixUp pairs)
    mlflow_run_id: str | None = None

    # The fields that, with the trajectory settings, fix the run's sample order and arithmetic.
    ORDER: ClassVar[dict[str, str]] = {"global_batch": "global batch", "streams": "streams", "micro_batch": "micro-batch"}

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "RunIdentity":
        return cls(**state)

    def check_compatible(self, path: str, *, fingerprint: str, classes: list[str], model_name: str) -> None:
        """Refuse a checkpoint made for another data set or model, in one line."""
        if self.model_name != model_name:
            raise UserError(f"{path} was trained with model {self.model_name!r}, not {model_name!r}")
        if self.classes != classes or self.data_fingerprint != fingerprint:
            raise UserError(f"{path} was made for another data set (fingerprint {self.data_fingerprint}, "
                            f"{len(self.classes or [])} classes; this one is {fingerprint}, {len(classes)} "
                            "classes): use a new --out or the matching --data")

    def changed_settings(self, now: "RunIdentity") -> list[str]:
        """What differs in ``now`` from this (the checkpoint's) run, as text: trajectory
        settings, and the global batch, streams and micro-batch (:attr:`ORDER`)."""
        from trainer.config import TrainConfig

        # Settings declared trajectory=True shape the data order or the arithmetic; the batch
        # settings count through what they make (ORDER); the world size and loader workers do not.
        old, new = self.config, now.config
        changed = [f"--{k.replace('_', '-')} {old[k]} -> {new[k]}" for k in trajectory_settings(TrainConfig)
                   if k in old and k in new and old[k] != new[k]]
        return changed + [f"{name} {getattr(self, key)} -> {getattr(now, key)}" for key, name in self.ORDER.items()
                          if getattr(self, key) != getattr(now, key)]


def scored_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights validation scored: the EMA's when the run kept one (``--model-ema``)."""
    return state[EMA]["weights"] if EMA in state else state[MODEL]


def run_identity(state: dict[str, Any]) -> RunIdentity:
    """The ``run`` part of a checkpoint dict (all unknown when the file has none: another
    loop's checkpoint, which :meth:`RunIdentity.check_compatible` then refuses)."""
    return RunIdentity.from_state_dict(state.get(RUN, {}))


class RngState:
    """The ``rng`` part: the CPU generator's state, and the current CUDA device's when there is one."""

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
