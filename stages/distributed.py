"""torch.distributed for the stages: the same command runs in one process or under `torchrun --nproc_per_node N`.

torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; with WORLD_SIZE > 1 a stage joins
the process group (gloo on CPU, nccl on CUDA, one GPU per local rank). Only rank 0 writes artifacts; the
others wait for it at a barrier, so no rank leaves before the outputs exist.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from stages.errors import StageError
from stages.params import Params

T = TypeVar("T")


def launched_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when started as a plain process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes artifacts and prints (rank 0, or the only process)."""
    return rank() == 0


@contextmanager
def process_group(params: Params, device: torch.device) -> Iterator[torch.device]:
    """Join the process group torchrun describes (if WORLD_SIZE > 1) and yield this rank's device.

    `distributed.world_size` in params.yaml must match the launch, so the recorded parameter is the one used.
    On CUDA each rank takes `cuda:LOCAL_RANK`. The group is destroyed on the way out.
    """
    expected = params.get_int("distributed.world_size", min=1)
    launched = launched_world_size()
    if launched != expected:
        raise StageError(f"params.yaml: 'distributed.world_size' is {expected} but this run has WORLD_SIZE={launched} "
                         f"(launch with `torchrun --nproc_per_node {expected}`, or change the parameter)")
    if launched == 1:
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if dist.is_initialized():
        dist.barrier()


def shard(batches: Iterable[T]) -> Iterator[T]:
    """This rank's share of the batches one process would see: batches rank, rank + N, rank + 2N, ...

    Sharding whole batches, not samples, keeps every batch what it is in one process, so per-batch results
    summed over the ranks (calibration scores, BatchNorm statistics) equal the one-process result. Every
    rank draws the whole sequence (the splits are in-memory tensors) and keeps its own batches.
    """
    return itertools.islice(batches, rank(), None, world_size())


def distributed_loader(dataset: TensorDataset, batch_size: int, seed: int) -> DataLoader:
    """A training loader over this rank's samples (DistributedSampler, shuffled by `seed` and the epoch):
    `batch_size` per rank, so one step sees `N * batch_size` samples; call `sampler.set_epoch` each epoch."""
    sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=0)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel when a process group is up (gradients averaged over the ranks)."""
    if not dist.is_initialized():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def average_batchnorm(model: nn.Module, batches: int, device: torch.device) -> None:
    """After each rank re-estimated BatchNorm statistics over its `batches` batches (cumulative average),
    make every rank hold the average over all ranks' batches, weighted by their counts. Tensors are reduced
    on `device` (nccl reduces CUDA tensors only)."""
    if not dist.is_initialized():
        return
    total = torch.tensor(float(batches), dtype=torch.float64, device=device)
    dist.all_reduce(total)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for name in ("running_mean", "running_var"):
                buffer = getattr(module, name)
                weighted = buffer.to(device, torch.float64) * batches
                dist.all_reduce(weighted)
                buffer.copy_(weighted / total)
            module.num_batches_tracked.fill_(int(total.item()))
