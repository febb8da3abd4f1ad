"""Stage `finetune`: re-estimate BatchNorm statistics of the pruned model, then train it N epochs with the
optimizer settings of `train`.

Under `torchrun --nproc_per_node N`: BatchNorm re-estimation shards the batches one process would use and
averages the statistics (same result as one process); training wraps the model in DistributedDataParallel
with a DistributedSampler (`data.batch_size` per rank); rank 0 measures accuracy and saves the model.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from stages.artifacts import read_json
from stages.bundle import ARCHITECTURE_FILE, load_bundle, save_bundle
from stages.data import load_split, make_loader
from stages.distributed import (
    average_batchnorm,
    barrier,
    distributed_loader,
    is_main,
    process_group,
    shard,
    world_size,
    wrap_ddp,
)
from stages.params import Params
from stages.training import accuracy, recalibrate_batchnorm, setup, train_epochs


def run(params: Params, data_dir: Path, pruned_dir: Path, out_dir: Path) -> None:
    """Fine-tune the pruned model and save it in the same two forms as `prune`."""
    seed, device = setup(params)
    with process_group(params, device) as device:
        _finetune(params, seed, device, data_dir, pruned_dir, out_dir)


def _finetune(params: Params, seed: int, device: torch.device, data_dir: Path, pruned_dir: Path, out_dir: Path) -> None:
    batch_size = params.get_int("data.batch_size", min=1)
    epochs = params.get_int("finetune.epochs", min=0)
    bn_batches = params.get_int("finetune.bn_batches", min=0)
    model = load_bundle(pruned_dir).to(device)
    train_set = load_split(data_dir, "train")
    train_loader = make_loader(train_set, batch_size, shuffle=True, seed=seed)
    val_loader = make_loader(load_split(data_dir, "val"), batch_size, shuffle=False, seed=seed)
    before = accuracy(model, val_loader, device) if is_main() else None
    if bn_batches:
        mine = list(shard(itertools.islice(train_loader, bn_batches)))
        recalibrate_batchnorm(model, mine, device, len(mine))
        average_batchnorm(model, len(mine), device)
    after_bn = accuracy(model, val_loader, device) if is_main() else None
    if world_size() > 1:
        train_loader = distributed_loader(train_set, batch_size, seed)
    train_epochs(wrap_ddp(model, device), train_loader, params, epochs, device, desc="finetune")
    if is_main():
        after = accuracy(model, val_loader, device)
        print(f"finetune: val accuracy {before:.4f} pruned, {after_bn:.4f} after BatchNorm re-estimation, "
              f"{after:.4f} after {epochs} epochs")
        architecture = read_json(Path(pruned_dir) / ARCHITECTURE_FILE)
        verified = save_bundle(model, architecture, out_dir, load_split(data_dir, "val").tensors[0][:8])
        if not verified:
            print(f"finetune: warning: {out_dir}/architecture.json did not rebuild this model; use model.pt (dill)")
    barrier()
