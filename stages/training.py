"""Seeding, the optimizer/schedule both `train` and `finetune` use, the training loop, accuracy and
BatchNorm re-estimation."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from stages.distributed import is_main
from stages.errors import StageError
from stages.params import Params

OPTIMIZERS = ("sgd", "adam", "adamw", "radam")
SCHEDULES = ("cosine", "constant")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch and ask torch for deterministic kernels (same seed, same bytes)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def setup(params: Params) -> tuple[int, torch.device]:
    """Apply `seed` and `threads` and check `device`; every stage starts with this. Returns (seed, device).

    A fixed thread count keeps float reductions (and so the bytes of every artifact) the same from run to
    run, and avoids oversubscribing a small machine (more threads than free cores slows every stage down).
    """
    seed = params.get_int("seed", min=0)
    torch.set_num_threads(params.get_int("threads", min=1))
    seed_everything(seed)
    return seed, resolve_device(params)


def resolve_device(params: Params) -> torch.device:
    """The `device` parameter as a torch.device, checked to be usable here."""
    name = params.get_str("device")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise StageError(f"params.yaml: 'device' = '{name}' is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StageError(f"params.yaml: 'device' = '{name}' but CUDA is not available here (use 'cpu')")
    return device


def make_optimizer(model: nn.Module, params: Params, epochs: int, steps_per_epoch: int):
    """The optimizer and per-step LR schedule from `train.optimizer` / `train.schedule`."""
    name = params.get_str("train.optimizer.name", choices=OPTIMIZERS)
    lr = params.get_float("train.optimizer.lr", min=0.0, min_inclusive=False)
    weight_decay = params.get_float("train.optimizer.weight_decay", min=0.0)
    if name == "sgd":
        momentum = params.get_float("train.optimizer.momentum", min=0.0, max=1.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}[name]
        optimizer = cls(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = params.get_str("train.schedule", choices=SCHEDULES)
    total = max(1, epochs * steps_per_epoch)
    if schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return optimizer, scheduler


def train_epochs(
    model: nn.Module, loader: DataLoader, params: Params, epochs: int, device: torch.device, desc: str
) -> list[float]:
    """Train `model` in place for `epochs` epochs; returns the mean loss of each epoch."""
    optimizer, scheduler = make_optimizer(model, params, epochs, len(loader))
    loss_fn = nn.CrossEntropyLoss()
    model.to(device)
    losses = []
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not is_main())
    for epoch in bar:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)  # a new shuffle per epoch, the same on every rank
        model.train()
        total, count = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(y)
            count += len(y)
        losses.append(total / count)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Top-1 accuracy in eval mode."""
    model.to(device).eval()
    correct, count = 0, 0
    for x, y in loader:
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        count += len(y)
    return correct / count


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, loader: DataLoader | Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device, batches: int
) -> int:
    """Reset BatchNorm running statistics and re-estimate them (cumulative average) without gradient steps.

    Pruning changes what each BatchNorm sees; stale statistics cost accuracy before fine-tuning starts.
    Returns the number of BatchNorm layers reset.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    saved_momentum = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.to(device).train()
    bar = tqdm(loader, desc="batchnorm re-estimation", total=min(batches, len(loader)), leave=False, disable=not is_main())
    for step, (x, _) in enumerate(bar):
        if step >= batches:
            break
        model(x.to(device))
    for m, momentum in zip(norms, saved_momentum):
        m.momentum = momentum
    return len(norms)
