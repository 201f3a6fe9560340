"""The DDP training program: ``torchrun --nproc-per-node N -m trainer.train --data D --out R``.

Shape after torchvision's reference script: :func:`build_optimizer`,
:func:`train_one_epoch`, :func:`validate` (scoring with :func:`trainer.metrics.evaluate`),
:func:`main`. What a run holds is a :class:`TrainingRun` (``run``): :meth:`TrainingRun.state`
saves it and :meth:`TrainingRun.load_state` restores it. Every rank runs exactly
``steps_per_epoch`` optimizer steps per epoch from an infinite per-rank Petastorm stream;
validation reads each image once across ranks and reduces sums; rank 0 alone prints,
writes checkpoints and talks to MLflow.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from data.errors import PeerFailure, RunFailure, UserError, cli, storage_errors
from data.gpu_decode import JpegBatch
from data.gpu_prefetch import make_device_prefetcher
from data.gpu_decode import model_input
from data.order import check_streams, default_streams
from data.split_reader import ParquetSplit
from data.workers import worker_context
from data.manifest import Manifest
from data.progress import progress_bar
from data.rank_loaders import make_eval_loader, make_train_loader, open_split, train_steps_per_epoch
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig, parse_args
from trainer.peers import StepBeacon
from trainer.distributed import (DistInfo, all_reduce_sum, broadcast_buffers, compute_cleanup, compute_init,
                                 print0)
from trainer.ema import ModelEma
from trainer.metrics import evaluate
from trainer.mixing import BatchMixing
from trainer.model import fetch_weights, pretrained_model, to_device
from trainer.precision import autocast_context, make_scaler, precision_dtype, precision_name
from trainer.schedule import lr_rule, peak_lr, warmup_cosine, warmup_length
from trainer.tracking import NullTracker, make_tracker
from trainer.watchdog import Watchdog

# A step the GradScaler skips (its gradients overflowed) leaves the optimizer unstepped
# while the schedule moves on, as it should: the warning about that says nothing to act on.
warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))


@dataclass
class Progress:
    """Where training stands: the checkpoint's ``progress`` part holds :attr:`SAVED`; the
    rest is this session's."""
    step: int = 0           # optimizer steps done
    epoch: int = 0          # epoch the next step belongs to
    step_in_epoch: int = 0  # steps of that epoch done
    best_top1: float = -1.0
    last_val: dict = field(default_factory=dict)
    skipped_steps: int = 0  # steps the fp16 loss scaler skipped (their gradients overflowed)
    images: int = 0         # images trained on by this process, this session
    busy_s: float = 0.0     # wall time of those steps
    wait_s: float = 0.0     # of which waiting for the loader

    SAVED: ClassVar[tuple[str, ...]] = ("step", "epoch", "step_in_epoch", "best_top1", "skipped_steps")

    def state_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.SAVED}

    def load_state_dict(self, state: dict) -> None:
        for name in self.SAVED:
            setattr(self, name, state[name])


@dataclass(kw_only=True)
class TrainingRun:
    """Everything a run holds, built once by :func:`setup` (keywords only); saved by
    :meth:`state`, restored by :meth:`load_state`."""
    cfg: TrainConfig
    dist: DistInfo
    manifest: Manifest
    train: ParquetSplit
    val: ParquetSplit | None
    steps_per_epoch: int
    global_batch: int         # images per optimizer step, all ranks (--global-batch-size)
    micro_batch: int          # images per forward pass on a rank: global_batch / (ranks x grad_accum)
    grad_accum: int           # micro-batches per optimizer step on a rank (TrainConfig.batches)
    streams: int              # canonical train streams (data.loader): the sample order with global_batch
    model: nn.Module          # what trains: the DDP-wrapped (and/or compiled) model_without_ddp
    model_without_ddp: nn.Module
    backbone: list[nn.Parameter]  # the pretrained parameters (--freeze-backbone-epochs); empty without weights
    ema: ModelEma | None      # --model-ema
    mixing: BatchMixing | None  # --mixup-alpha / --cutmix-alpha
    lr: float                 # the peak LR (after warm-up): --lr or the optimizer's batch scaling rule
    warmup_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    tracker: NullTracker
    beacon: StepBeacon        # publishes the step, names a lost peer
    autocast_dtype: torch.dtype | None
    channels_last: bool
    watchdog: Watchdog        # writes the stacks when no progress comes
    progress: Progress = field(default_factory=Progress)
    last_saved_step: int | None = None  # the step of the last.pt this process wrote last

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch

    @property
    def stop_reached(self) -> bool:
        """True once ``--stop-after-steps`` steps are done (never without that option)."""
        return self.cfg.stop_after_steps is not None and self.progress.step >= self.cfg.stop_after_steps

    def autocast(self):
        return autocast_context(self.dist.device, self.autocast_dtype)

    @property
    def eval_model(self) -> nn.Module:
        """What validation scores and checkpoints offer for inference: the EMA when kept."""
        return self.ema.module if self.ema is not None else self.model_without_ddp

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze or unfreeze the pretrained parameters, wrapping the model afresh when that
        changes (DDP reduces the gradients of the parameters that required them when wrapped)."""
        if self.backbone and self.backbone[0].requires_grad == frozen:
            for param in self.backbone:
                param.requires_grad_(not frozen)
            self.model = wrap_model(self.model_without_ddp, self.dist, self.cfg.compile)
            print0(f"backbone {'frozen' if frozen else 'unfrozen'} from epoch {self.progress.epoch + 1}")

    def loader(self, parquet: ParquetSplit, train: bool, epoch: int = 0, skip: int = 0):
        """The public :func:`data.make_train_loader` (``steps_per_epoch`` batches from step
        ``skip`` of ``epoch``) or :func:`data.make_eval_loader`, for this rank."""
        common = dict(workers=self.cfg.workers, pin_memory=self.dist.device.type == "cuda", rank=self.dist.rank,
                      world_size=self.dist.world_size, image_size=self.cfg.image_size, decode=self.cfg.decode)
        if train:  # the rank's slice of each global batch, split into micro-batches by train_one_epoch
            return make_train_loader(parquet, batch_size=self.global_batch // self.dist.world_size,
                                     steps_per_epoch=self.steps_per_epoch, seed=self.cfg.seed, epoch=epoch,
                                     skip_batches=skip, auto_augment=self.cfg.auto_augment,
                                     random_erase=self.cfg.random_erase, streams=self.streams, **common)
        return make_eval_loader(parquet, batch_size=self.micro_batch, **common)

    def inputs(self, images: torch.Tensor | JpegBatch, labels: torch.Tensor):
        x = model_input(images, self.cfg.image_size, self.dist.device, channels_last=self.channels_last)
        return x, labels.to(self.dist.device, non_blocking=True)

    @property
    def identity(self) -> ckpt.RunIdentity:
        """The checkpoint's ``run`` part: what this run is made for and what orders its samples."""
        return ckpt.RunIdentity(
            config=self.cfg.to_dict(), classes=self.manifest.classes, data_fingerprint=self.manifest.fingerprint,
            model_name=self.cfg.model, world_size=self.dist.world_size, global_batch=self.global_batch,
            streams=self.streams, micro_batch=self.micro_batch, mlflow_run_id=self.tracker.run_id)

    def parts(self) -> dict:
        """The checkpoint's parts that :meth:`load_state` restores, by name, each with
        ``state_dict()`` and ``load_state_dict()``."""
        return {ckpt.MODEL: self.model_without_ddp, ckpt.OPTIMIZER: self.optimizer, ckpt.SCHEDULER: self.scheduler,
                ckpt.SCALER: self.scaler, **({ckpt.EMA: self.ema} if self.ema is not None else {}),
                ckpt.PROGRESS: self.progress, ckpt.RNG: ckpt.RngState()}

    def state(self) -> dict:
        """What a checkpoint holds (the layout: :mod:`trainer.checkpoint`): enough to continue
        as if never stopped, and to refuse another data set or model."""
        return {**{name: part.state_dict() for name, part in self.parts().items()},
                ckpt.RUN: self.identity.state_dict()}

    def load_state(self, state: dict) -> None:
        """Continue from a checkpoint that :meth:`state` wrote: every part but ``run``, which
        :func:`setup` reads before the run is built (the batches, streams and MLflow run)."""
        if self.ema is not None and ckpt.EMA not in state:
            raise UserError("--model-ema: the checkpoint has no EMA weights (its run had no --model-ema)")
        for name, part in self.parts().items():
            part.load_state_dict(state[name])

    def save(self, name: str) -> str | None:
        if not self.dist.is_main:
            return None
        # The last.pt of an earlier step is kept as previous.pt (why: trainer.checkpoint); a
        # second write at the same step (an epoch's end after --ckpt-every) replaces last.pt only.
        folder, step = ckpt.checkpoint_dir(self.cfg.out), self.progress.step
        previous = os.path.join(folder, ckpt.PREVIOUS) if name == ckpt.LAST and step != self.last_saved_step else None
        path = ckpt.save_checkpoint(self.state(), os.path.join(folder, name), previous)
        if name == ckpt.LAST:
            self.last_saved_step = step
        return path


def validate(run: TrainingRun) -> dict:
    """Run :func:`evaluate` on the val split (the EMA weights with ``--model-ema``); log it,
    keep ``best.pt`` when top-1 improves."""
    broadcast_buffers(run.eval_model)  # every rank scores the model rank 0 saves
    progress = run.progress
    with run.loader(run.val, train=False) as batches:
        res = evaluate(run.eval_model, run.watchdog.watch(batches, f"validation at step {progress.step}"),
                       run.dist.device, run.manifest.num_classes, run.inputs, run.autocast).results()
    run.watchdog.tick(f"validation at step {progress.step}")
    progress.last_val = res
    run.tracker.log_metrics({"val_loss": res["loss"], "val_top1": res["top1"], "val_top5": res["top5"]}, progress.step)
    print0(f"step {progress.step}/{run.total_steps}  val_loss {res['loss']:.4f}  top1 {res['top1']:.4f}  "
           f"top5 {res['top5']:.4f}  ({res['count']} images)")
    if res["top1"] > progress.best_top1:
        progress.best_top1 = res["top1"]
        run.save(ckpt.BEST)
    run.model.train()
    return res


def train_one_epoch(run: TrainingRun, batches, bar) -> None:
    """Run the rest of ``run.progress.epoch``: exactly steps_per_epoch steps in all
    (fewer only when ``--stop-after-steps`` is reached first). ``batches`` yields
    :meth:`TrainingRun.inputs` ``(x, y)``: model inputs and labels on the device."""
    cfg, progress = run.cfg, run.progress
    run.model.train()
    window_start, window_images, window_wait = time.perf_counter(), 0, 0.0
    while progress.step_in_epoch < run.steps_per_epoch and not run.stop_reached:
        t0 = time.perf_counter()
        x, y = next(batches)  # run.inputs, made ready one batch ahead (see fit)
        t1 = time.perf_counter()
        run.optimizer.zero_grad(set_to_none=True)
        loss = micro_steps(run, x, y)
        if cfg.grad_clip:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.model_without_ddp.parameters(), cfg.grad_clip)
        scale = run.scaler.get_scale() if run.scaler.is_enabled() else 0.0
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.scaler.is_enabled() and run.scaler.get_scale() < scale:  # backed off: this step was skipped
            progress.skipped_steps += 1
        if run.ema is not None:
            run.ema.update(run.model_without_ddp)
        run.scheduler.step()
        progress.step += 1
        progress.step_in_epoch += 1
        run.beacon.mark(progress.step)
        run.watchdog.tick(f"train step {progress.step}")
        window_images += len(y)
        window_wait += t1 - t0
        if progress.step % cfg.log_every == 0 or progress.step_in_epoch == run.steps_per_epoch or run.stop_reached:
            # The ranks' current losses, averaged (reading it syncs the device: only here).
            ranks_loss = all_reduce_sum(torch.tensor([loss.float().item(), 1.0], dtype=torch.float64))
            elapsed = time.perf_counter() - window_start
            metrics = {"train_loss": float(ranks_loss[0] / ranks_loss[1]),
                       "lr": run.scheduler.get_last_lr()[0],
                       "train_images_per_s": window_images * run.dist.world_size / elapsed,
                       "data_wait_fraction": window_wait / elapsed,
                       **({"skipped_steps": progress.skipped_steps} if run.scaler.is_enabled() else {})}
            run.tracker.log_metrics(metrics, progress.step)
            bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", lr=f"{metrics['lr']:.2e}",
                            img_s=f"{metrics['train_images_per_s']:.0f}")
            progress.images += window_images
            progress.busy_s += elapsed
            progress.wait_s += window_wait
            window_start, window_images, window_wait = time.perf_counter(), 0, 0.0
        bar.update(1)
        if run.val is not None and cfg.val_every and progress.step % cfg.val_every == 0:
            started = time.perf_counter()
            validate(run)
            window_start += time.perf_counter() - started  # the window's steps keep their time
        if cfg.ckpt_every and progress.step % cfg.ckpt_every == 0:
            run.save(ckpt.LAST)


def micro_steps(run: TrainingRun, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward and backward the rank's batch ``--grad-accum`` micro-batches at a time (DDP
    reduces the gradients once, after the last); returns the batch's mean loss. Micro-batch
    ``i`` of rank ``r`` is micro-batch ``r * grad_accum + i`` of the global batch, whatever
    the world size: MixUp/CutMix are keyed by that index."""
    accum, size = run.grad_accum, run.micro_batch
    total = torch.zeros((), device=x.device)
    for i in range(accum):
        xi, yi = x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]
        if run.mixing is not None:
            xi, yi = run.mixing(xi, yi, run.progress.step, run.dist.rank * accum + i)
        sync = i == accum - 1 or not hasattr(run.model, "no_sync")
        with contextlib.nullcontext() if sync else run.model.no_sync():
            with run.autocast():
                loss = run.criterion(run.model(xi), yi) / accum
            run.scaler.scale(loss).backward()
        total += loss.detach()
    return total


def build_optimizer(cfg: TrainConfig, model: nn.Module, lr: float,
                    backbone: set[str] = frozenset()) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or AdamW, at ``lr``; the ``backbone`` parameters (by name:
    the pretrained ones) at ``lr x --backbone-lr-factor``; weight decay only on weights of
    two or more dimensions (not on biases and norm weights)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}  # (pretrained, decays) -> parameters
    for name, param in model.named_parameters():
        groups.setdefault((name in backbone, param.ndim > 1), []).append(param)
    # Fresh decaying, fresh other, then pretrained groups: a run without pretrained weights has
    # the first two only, in the order its optimizer state was saved.
    order = [(False, True), (False, False), (True, True), (True, False)]
    param_groups = [{"params": groups[key], "weight_decay": cfg.weight_decay if key[1] else 0.0,
                     "lr": lr * cfg.backbone_lr_factor if key[0] else lr} for key in order if key in groups]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(param_groups, lr=lr)


def wrap_model(model: nn.Module, dist: DistInfo, compile_: bool) -> nn.Module:
    """What the training steps call: ``model`` in DDP (in a world of more than one), then
    ``torch.compile``d when asked. Checkpoints keep ``model`` itself: no ``module.`` or
    ``_orig_mod.`` prefixes."""
    if dist.distributed:
        model = DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    return torch.compile(model) if compile_ else model


def cache_weights(model_name: str, weights: str, dist: DistInfo) -> None:
    """Put torchvision ``weights`` in the torch cache, downloading once per machine: local
    rank 0 fetches them while the other ranks wait, then every rank reads the cached file.
    If the download fails every rank stops with a one-line error."""
    error = None
    if dist.local_rank == 0:
        try:
            fetch_weights(model_name, weights, progress=True)
        except UserError as exc:
            error = str(exc)
    failed = all_reduce_sum(torch.tensor([error is not None], dtype=torch.int64))  # also: the others wait here
    if failed.item():
        raise UserError(error or f"weights {model_name} {weights} could not be downloaded (see local rank 0's error)")


def setup(cfg: TrainConfig, dist: DistInfo, beacon: StepBeacon, watchdog: Watchdog) -> TrainingRun:
    """Check inputs, build model/optimizer/schedule, restore a checkpoint if resuming."""
    manifest = Manifest.load(cfg.data)
    if cfg.decode == "gpu" and dist.device.type != "cuda":
        raise UserError("--decode gpu needs a CUDA device; use --decode cpu")
    if cfg.workers:
        worker_context()  # the loader workers' server starts now, beside the model build
    train = open_split(cfg.data, "train", manifest)
    val_split = manifest.splits.get("val")
    val = open_split(cfg.data, "val", manifest) if val_split and val_split.rows else None
    resume_path, resumed, fallback = ckpt.load_resume(cfg.out, cfg.resume)
    if fallback:
        print0(f"warning: {fallback}")
    saved = ckpt.run_identity(resumed) if resumed is not None else None
    if saved is not None:
        saved.check_compatible(resume_path, fingerprint=manifest.fingerprint, classes=manifest.classes,
                               model_name=cfg.model)
    global_batch, micro_batch, grad_accum = cfg.batches(dist.world_size, saved and saved.micro_batch)
    steps_per_epoch = train_steps_per_epoch(train, global_batch // dist.world_size, dist.world_size,
                                            cfg.steps_per_epoch)
    streams = train_streams(cfg, saved, global_batch, dist.world_size)

    autocast_dtype = precision_dtype(cfg.precision, dist.device)
    if cfg.weights:
        cache_weights(cfg.model, cfg.weights, dist)
    torch.manual_seed(cfg.seed)
    model, fresh = pretrained_model(cfg.model, manifest.num_classes, cfg.weights, cfg.weights_path)
    model = to_device(model, dist.device)
    backbone = {name for name, _ in model.named_parameters() if name not in fresh}
    total_steps = cfg.epochs * steps_per_epoch
    lr = peak_lr(cfg.lr, cfg.base_lr, cfg.optimizer, global_batch)
    warmup_steps = warmup_length(cfg.warmup_steps, cfg.warmup_epochs, steps_per_epoch, total_steps)
    optimizer = build_optimizer(cfg, model, lr, backbone)
    mixing = BatchMixing(manifest.num_classes, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.seed)
    run = TrainingRun(
        cfg=cfg, dist=dist, manifest=manifest, train=train, val=val, steps_per_epoch=steps_per_epoch,
        global_batch=global_batch, micro_batch=micro_batch, grad_accum=grad_accum, streams=streams,
        model=wrap_model(model, dist, cfg.compile), model_without_ddp=model,
        backbone=[param for name, param in model.named_parameters() if name in backbone],
        ema=ModelEma(model, cfg.model_ema_decay) if cfg.model_ema else None,
        mixing=mixing if mixing.active else None, lr=lr, warmup_steps=warmup_steps, optimizer=optimizer,
        scheduler=warmup_cosine(optimizer, warmup_steps, total_steps),
        scaler=make_scaler(dist.device, autocast_dtype),
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        tracker=make_tracker(dist.is_main, cfg.out, cfg.experiment, saved and saved.mlflow_run_id),
        beacon=beacon, watchdog=watchdog, autocast_dtype=autocast_dtype, channels_last=dist.device.type == "cuda")
    if resumed is not None:
        run.load_state(resumed)
        changed = saved.changed_settings(run.identity)
        if changed:
            print0(f"note: resuming with {', '.join(changed)}: training goes on, but not exactly as it "
                   "would have without the interruption")
        elif saved.world_size != dist.world_size:
            print0(f"resuming on {dist.world_size} rank(s) (was {saved.world_size}): the same global "
                   f"batches (micro-batch {micro_batch}, {grad_accum} accumulated per rank); gradients are summed "
                   "in another order, so the weights follow the uninterrupted run up to float rounding, not bit "
                   "for bit")
        print0(f"resuming from {resume_path} at step {run.progress.step} (epoch {run.progress.epoch + 1}, "
               f"step {run.progress.step_in_epoch} of {steps_per_epoch})")
    return run


def train_streams(cfg: TrainConfig, saved: ckpt.RunIdentity | None, global_batch: int, world_size: int) -> int:
    """``--streams``; else the checkpoint's (``saved``) when it fits this world size and global
    batch (so the run goes on in the same order); else :func:`data.order.default_streams`."""
    if cfg.streams is None and saved is not None and saved.global_batch == global_batch \
            and saved.streams % world_size == 0:
        return saved.streams
    streams = cfg.streams or default_streams(global_batch, world_size, cfg.workers)
    check_streams(streams, global_batch, world_size)
    return streams


def fit(run: TrainingRun) -> dict:
    """Train to ``epochs * steps_per_epoch`` steps from wherever ``run.progress`` stands."""
    cfg, progress = run.cfg, run.progress
    run.tracker.log_params({**cfg.to_dict(), "world_size": run.dist.world_size, "global_batch": run.global_batch,
                            "micro_batch": run.micro_batch, "effective_grad_accum": run.grad_accum,
                            "effective_streams": run.streams,
                            "steps_per_epoch": run.steps_per_epoch, "num_classes": run.manifest.num_classes,
                            "data_fingerprint": run.manifest.fingerprint, "effective_lr": run.lr,
                            "effective_warmup_steps": run.warmup_steps,
                            "effective_precision": precision_name(run.autocast_dtype)})
    run.tracker.log_dict(run.manifest.classes, "classes.json")
    run.tracker.log_dict(cfg.to_dict(), "config.json")
    print0(f"training {cfg.model} on {run.train.rows} images, {run.manifest.num_classes} classes: "
           f"global batch {run.global_batch} ({run.dist.world_size} rank(s) x {run.grad_accum} x micro-batch "
           f"{run.micro_batch}) from {run.streams} streams, {cfg.epochs} epochs x {run.steps_per_epoch} steps, "
           f"device {run.dist.device.type}, {precision_name(run.autocast_dtype)}")
    rule = lr_rule(cfg.lr, cfg.base_lr, cfg.optimizer, run.global_batch)
    print0(f"{cfg.optimizer} LR {run.lr:.4g} ({rule}), linear warm-up over {run.warmup_steps} steps, "
           f"then cosine to 0" + (f"; pretrained layers at {cfg.backbone_lr_factor:g} x" if run.backbone and
                                  cfg.backbone_lr_factor != 1 else ""))
    bar = progress_bar(total=run.total_steps, initial=progress.step, unit="step", dynamic_ncols=True,
               disable=not (cfg.progress and run.dist.is_main))
    run.watchdog.tick(f"start of training at step {progress.step}")
    try:
        while progress.epoch < cfg.epochs and not run.stop_reached:
            bar.set_description(f"epoch {progress.epoch + 1}/{cfg.epochs}")
            run.set_backbone_frozen(progress.epoch < cfg.freeze_backbone_epochs)
            # The next batch is decoded (--decode gpu) or copied and normalised on a side
            # stream while this step runs (data.gpu_prefetch); same batches, same order.
            with run.loader(run.train, train=True, epoch=progress.epoch, skip=progress.step_in_epoch) as batches, \
                    make_device_prefetcher(batches, run.inputs, run.dist.device) as inputs:
                train_one_epoch(run, inputs, bar)
            if progress.step_in_epoch < run.steps_per_epoch:  # --stop-after-steps, mid-epoch
                run.save(ckpt.LAST)
                print0(f"stopped after step {progress.step} of {run.total_steps} (--stop-after-steps): "
                       "continue with --resume auto")
                return summarize(run)
            validated = cfg.val_every and progress.step % cfg.val_every == 0
            if run.val is not None and not validated:
                validate(run)
            progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
            run.save(ckpt.LAST)
        if run.val is not None and not progress.last_val and not run.stop_reached:  # resumed after the last step
            validate(run)
    finally:
        bar.close()
    return summarize(run)


def summarize(run: TrainingRun) -> dict:
    """Reduce the run's numbers over ranks; rank 0 writes summary.json and logs artifacts."""
    progress, val = run.progress, run.progress.last_val
    world = run.dist.world_size
    steps_by_rank = torch.zeros(world, dtype=torch.float64)
    steps_by_rank[run.dist.rank] = progress.step
    times = torch.tensor([progress.images, progress.busy_s, progress.wait_s], dtype=torch.float64)
    stats = all_reduce_sum(torch.cat([times, steps_by_rank]))
    summary = {
        "steps": progress.step, "steps_per_epoch": run.steps_per_epoch, "epochs": run.cfg.epochs,
        "world_size": world, "val_top1": val.get("top1"), "val_top5": val.get("top5"),
        "val_loss": val.get("loss"), "val_count": val.get("count"), "best_val_top1": max(progress.best_top1, 0.0),
        "skipped_steps": progress.skipped_steps,
        "train_images_per_s": float(stats[0] / (stats[1] / world)) if stats[1] else None,
        "data_wait_fraction": float(stats[2] / stats[1]) if stats[1] else None,
        "rank_steps": [int(v) for v in stats[3:]],  # optimizer steps each rank ran: all equal
        "run_dir": os.path.abspath(run.cfg.out), "mlflow_run_id": run.tracker.run_id,
        "mlflow_tracking_uri": run.tracker.tracking_uri,
    }
    if run.dist.is_main:
        best = os.path.join(ckpt.checkpoint_dir(run.cfg.out), ckpt.BEST)
        state = ckpt.load_checkpoint(best) if os.path.isfile(best) else run.state()
        # A full disk here loses nothing: the checkpoints are written, and a rerun with
        # --resume auto of the finished run logs the model and artifacts again.
        need = ckpt.state_bytes(state[ckpt.MODEL]) + (os.path.getsize(best) if os.path.isfile(best) else 0)
        with storage_errors(f"cannot store the MLflow model and artifacts in {run.tracker.artifact_uri} (they need "
                            f"about {need / 2**20:.1f} MiB)",
                            f"the run's checkpoints are kept in {ckpt.checkpoint_dir(run.cfg.out)}: free space "
                            "and rerun with --resume auto to store them"):
            if progress.step >= run.total_steps:  # a finished run: its best weights become the MLflow model
                model_uri, version = run.tracker.log_model(state, run.cfg.register_model)
                summary.update(mlflow_model_uri=model_uri, mlflow_model_version=version)
                print0(f"MLflow model: {model_uri}" + (f" (registered as {run.cfg.register_model} version {version})"
                                                        if version else ""))
            with open(os.path.join(run.cfg.out, "summary.json"), "w") as f:
                json.dump(summary, f, indent=2)
            if os.path.isfile(best):
                run.tracker.log_artifact(best)
            run.tracker.log_artifact(os.path.join(run.cfg.out, "summary.json"))
    return summary


def prepare_run_dir(out: str) -> None:
    """Create the run folder and prove it is writable before any process group exists."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to --out {out}: {exc.strerror or exc}") from None


def main(argv: list[str] | TrainConfig | None = None) -> dict | None:
    """Train; returns the summary dict on rank 0 (None on other ranks)."""
    cfg = argv if isinstance(argv, TrainConfig) else parse_args(argv)
    prepare_run_dir(cfg.out)
    dist = compute_init(cfg.dist_timeout)
    beacon = StepBeacon(dist.rank, dist.world_size)
    watchdog = Watchdog(cfg.out, dist.rank, cfg.stacks_after, on_stall=beacon.stalled)
    run = None
    try:
        run = setup(cfg, dist, beacon, watchdog)
        beacon.mark(run.progress.step)
        summary = fit(run)
        run.tracker.close("KILLED" if summary["steps"] < run.total_steps else "FINISHED")
        return summary if dist.is_main else None
    except BaseException as exc:
        if run is not None:
            run.tracker.close("FAILED")
        if isinstance(exc, RunFailure):  # its line names the stacks folder: this rank's file too
            watchdog.dump(str(exc))
        lost_peer = None if isinstance(exc, UserError) else beacon.describe(exc, cfg.dist_timeout)
        if lost_peer:
            watchdog.dump("a collective failed")
            raise PeerFailure(f"{lost_peer}. Python stacks of each rank: {watchdog.directory}") from exc
        raise
    finally:
        watchdog.close()
        beacon.close()
        compute_cleanup()


if __name__ == "__main__":
    cli(main)(sys.argv[1:])
