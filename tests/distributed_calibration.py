"""One rank of the distributed calibration test: calibrate a shard, select, prune, save what came out.

Run as a script by `test_distributed.py` (one process per rank, env:// rendezvous), or imported and called
with `world_size=1` for the single-process reference over the union of the shards.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from models import Residual
from torch.nn.parallel import DistributedDataParallel

from pruning import GlobalScoreLabelSelector, LossAwareCriterion, MagnitudeCriterion, PruningIR, UniformLabelSelector

NUM_BATCHES = 6


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The whole calibration set: NUM_BATCHES batches, the same on every rank."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(NUM_BATCHES)]


def run(rank: int, world_size: int, ddp: bool, criterion: str = "loss_aware", covariance: bool = False,
        train: bool = False) -> dict[str, object]:
    """Calibrate on batches rank, rank + world_size, ...; returns scores, both selections, the pruned state_dict.
    ``criterion``: ``loss_aware`` (forward and backward) or ``magnitude`` (forward only: the means);
    ``covariance``: record input covariances too (the pruning then uses regression compensation); ``train``:
    calibrate in train mode (BatchNorm normalises by batch statistics and updates its running ones, which the
    criterion puts back on exit, so each rank's shard leaves no trace in the pruned state_dict)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ir = PruningIR(Residual().train(train), example_input=torch.randn(2, 3, 8, 8))
    if ddp:  # DDP is optional: the collector runs the snapshot model; the wrapper only shares its parameters
        DistributedDataParallel(ir.snapshot().model)
    loss_aware = criterion == "loss_aware"
    with (LossAwareCriterion if loss_aware else MagnitudeCriterion)(ir, input_covariance=covariance) as collector:
        for x, y in batches()[rank::world_size]:
            out = collector(x)
            if loss_aware:
                F.cross_entropy(out, y).backward()
    uniform = UniformLabelSelector(0.5).select(ir)
    global_ = GlobalScoreLabelSelector(0.5).select(ir)
    pruned = ir.prune(labels=global_).model
    return {
        "scores": ir.snapshot().scores,
        "input_means": ir.snapshot().input_means,
        "input_covariances": ir.snapshot().input_covariances,
        "uniform": [label.index for label in uniform],
        "global": [label.index for label in global_],
        "pruned": {k: v.detach().clone() for k, v in pruned.state_dict().items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--ddp", action="store_true")
    parser.add_argument("--criterion", default="loss_aware", choices=("loss_aware", "magnitude"))
    parser.add_argument("--covariance", action="store_true")
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    try:
        rank = dist.get_rank()
        torch.save(run(rank, dist.get_world_size(), args.ddp, args.criterion, args.covariance, args.train), args.out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
