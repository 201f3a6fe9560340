"""A custom DDP loop on the public API: RegNetX-400MF trained with mixup.

    torchrun --nproc-per-node 2 examples/custom_loop.py --data DIR [--out RUN_DIR]

Every rank runs the same number of steps on its share of each global batch, validation
reads each image once across ranks and reduces exact sums, rank 0 logs to MLflow and
writes RUN_DIR/checkpoints/last.pt; started again with the same --out, it carries on from
there, on any world size that divides --streams: the global batches are the same.
"""
import argparse
import os

import torch
import torch.nn.functional as F
import torchvision
from torch.nn.parallel import DistributedDataParallel as DDP

from data import Manifest, make_eval_loader, make_train_loader, normalize
from trainer import (ClassificationSums, all_reduce_sum, broadcast_buffers, checkpoint_dir, compute_cleanup,
                     compute_init, find_latest_checkpoint, load_checkpoint, make_tracker, print0, save_checkpoint)

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--data", required=True, help="folder written by python -m data.convert")
p.add_argument("--out", default="runs/custom_loop", help="run folder: checkpoint and MLflow store")
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--steps-per-epoch", type=int, help="per rank (default: one pass over the train split)")
p.add_argument("--batch-size", type=int, default=16, help="per rank")
p.add_argument("--global-batch-size", type=int, help="images per step over all ranks, instead of --batch-size")
p.add_argument("--streams", type=int, default=8, help="canonical train streams: the world size must divide them")
p.add_argument("--image-size", type=int, default=64)
p.add_argument("--workers", type=int, default=2, help="loader processes per rank")
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--mixup", type=float, default=0.2, help="alpha of Beta(alpha, alpha); 0: no mixup")
args = p.parse_args()

dist = compute_init()  # rank, local_rank, world_size, device from torchrun's environment
try:
    num_classes = Manifest.load(args.data).num_classes
    torch.manual_seed(0)
    model = torchvision.models.regnet_x_400mf(num_classes=num_classes)
    model = model.to(dist.device, memory_format=torch.channels_last)  # normalize() gives channels_last
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    start, latest = 0, find_latest_checkpoint(args.out)
    if latest:
        state = load_checkpoint(latest)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"]
    ddp = DDP(model) if dist.world_size > 1 else model
    tracker = make_tracker(dist.is_main, args.out, "custom-loop")  # MLflow on rank 0, a no-op elsewhere
    tracker.log_params(vars(args))
    per_rank = args.global_batch_size // dist.world_size if args.global_batch_size else args.batch_size
    sizes = dict(batch_size=per_rank, image_size=args.image_size, workers=args.workers)
    beta, steps = torch.distributions.Beta(args.mixup, args.mixup) if args.mixup > 0 else None, 0
    for epoch in range(start, args.epochs):
        ddp.train()
        with make_train_loader(args.data, steps_per_epoch=args.steps_per_epoch, epoch=epoch, streams=args.streams,
                               **sizes) as batches:
            for images, labels in batches:  # exactly the same number of batches on every rank
                x, y = normalize(images, dist.device), labels.to(dist.device)
                lam, perm = float(beta.sample()) if beta else 1.0, torch.randperm(len(y))
                logits = ddp(lam * x + (1 - lam) * x[perm])
                loss = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
        broadcast_buffers(model)  # score rank 0's BatchNorm statistics everywhere: the model it saves
        model.eval()
        sums = ClassificationSums(num_classes)
        with torch.no_grad(), make_eval_loader(args.data, "val", **sizes) as batches:
            for images, labels in batches:  # the unwrapped model: ranks hold different batch counts
                logits, y = model(normalize(images, dist.device)), labels.to(dist.device)
                sums.update(logits, y, F.cross_entropy(logits, y, reduction="sum").item())
        val = sums.reduce().results()  # summed over ranks, then divided: exact
        tracker.log_metrics({"val_loss": val["loss"], "val_top1": val["top1"]}, step=epoch + 1)
        print0(f"epoch {epoch + 1}: val loss {val['loss']:.4f}  top-1 {val['top1']:.4f}  ({val['count']} images)")
        if dist.is_main:
            save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1},
                            os.path.join(checkpoint_dir(args.out), "last.pt"))
    per_rank = torch.zeros(dist.world_size, dtype=torch.float64)
    per_rank[dist.rank] = steps
    print0(f"steps per rank: {all_reduce_sum(per_rank).long().tolist()}")
    tracker.close()
finally:
    compute_cleanup()
