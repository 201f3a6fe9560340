"""Checkpoints: everything needed to continue as if never stopped, written atomically.

A checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``) whose keys
are the constants below. Weights are the unwrapped model's (no ``module.`` prefix).
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
from typing import Any

import torch

from data.settings import trajectory_settings
from data.errors import UserError

FORMAT_VERSION = 1
FORMAT = "format"
MODEL = "model"
OPTIMIZER = "optimizer"
SCHEDULER = "scheduler"
SCALER = "scaler"
STEP = "step"                    # optimizer steps done in total
EPOCH = "epoch"                  # epoch the next step belongs to
STEP_IN_EPOCH = "step_in_epoch"  # steps of that epoch already done
BEST_TOP1 = "best_val_top1"
CONFIG = "config"
RNG = "rng"
MLFLOW_RUN_ID = "mlflow_run_id"
CLASSES = "classes"
DATA_FINGERPRINT = "data_fingerprint"
MODEL_NAME = "model_name"
WORLD_SIZE = "world_size"          # ranks that trained it
SKIPPED_STEPS = "skipped_steps"    # steps the fp16 loss scaler skipped
EMA = "ema"                        # --model-ema: the averaged weights (what validation scored)
EMA_UPDATES = "ema_updates"
GLOBAL_BATCH = "global_batch"      # images per optimizer step, all ranks
STREAMS = "streams"                # canonical train streams (data.loader): with GLOBAL_BATCH, the sample order
MICRO_BATCH = "micro_batch"        # images per forward pass on a rank (BatchNorm statistics, MixUp pairs)

LAST = "last.pt"
PREVIOUS = "previous.pt"  # the last.pt before the current one
BEST = "best.pt"


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
    if not isinstance(state, dict) or state.get(FORMAT) != FORMAT_VERSION or MODEL not in state:
        raise UserError(f"{path} is not a checkpoint written by this trainer")
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
        except UserError as exc:
            skipped.append(str(exc))
            continue
        note = f"{'; '.join(skipped)}: resuming from {candidate}, the newest checkpoint that loads" if skipped else None
        return candidate, state, note
    if skipped:
        raise UserError(f"no checkpoint in {folder} loads ({'; '.join(skipped)}): start a new --out, or pass "
                        "--resume with a good file")
    return None, None, None


def check_compatible(state: dict[str, Any], *, fingerprint: str, classes: list[str], model_name: str,
                     path: str) -> None:
    """Refuse a checkpoint made for another data set or model, in one line."""
    if state.get(MODEL_NAME) != model_name:
        raise UserError(f"{path} was trained with model {state.get(MODEL_NAME)!r}, not {model_name!r}")
    if state.get(CLASSES) != classes or state.get(DATA_FINGERPRINT) != fingerprint:
        raise UserError(f"{path} was made for another data set (fingerprint {state.get(DATA_FINGERPRINT)}, "
                        f"{len(state.get(CLASSES) or [])} classes; this one is {fingerprint}, {len(classes)} "
                        "classes): use a new --out or the matching --data")


ORDER = {GLOBAL_BATCH: "global batch", STREAMS: "streams", MICRO_BATCH: "micro-batch"}


def changed_settings(state: dict[str, Any], config: dict[str, Any], order: dict[str, int]) -> list[str]:
    """What differs from the checkpoint's run, as text: trajectory settings, and the global
    batch, streams and micro-batch (``order``, keyed by :data:`ORDER`)."""
    from trainer.config import TrainConfig

    # Settings declared trajectory=True shape the data order or the arithmetic; the batch
    # settings count through what they make (ORDER); the world size and loader workers do not.
    old = state.get(CONFIG) or {}
    changed = [f"--{k.replace('_', '-')} {old[k]} -> {config[k]}" for k in trajectory_settings(TrainConfig)
               if k in old and k in config and old[k] != config[k]]
    if STREAMS not in state:
        return changed + ["the sample order (the checkpoint records no stream count)"]
    return changed + [f"{name} {state[key]} -> {order[key]}" for key, name in ORDER.items() if state[key] != order[key]]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
