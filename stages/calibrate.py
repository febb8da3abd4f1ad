"""Stage `calibrate`: label scores over N training batches; saves the scored IR.

`calibrate.criterion`: `loss_aware` (`LossAwareCriterion`, cross-entropy gradients) or `magnitude`
(`MagnitudeCriterion`: relative weight norms; the batches only run forward, for the input means that
`prune.compensate` folds into biases). `calibrate.input_covariance: true` also records the input covariances
that regression compensation (`prune.compensate`) needs.

Under `torchrun --nproc_per_node N` each rank scores every N-th of the batches and the criterion all-reduces
the sums, so the scores equal the one-process scores (up to float rounding); rank 0 saves the IR.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pruning import LossAwareCriterion, MagnitudeCriterion, PruningIR
from stages.artifacts import load_pickled, save_pickled
from stages.data import load_split, make_loader
from stages.distributed import barrier, is_main, process_group, rank, shard, world_size
from stages.params import Params
from stages.training import setup

CRITERIA = ("loss_aware", "magnitude")  # calibrate.criterion


def _batches(loader: DataLoader, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`count` batches, going through the loader again (reshuffled) when it runs out."""
    produced = 0
    while True:
        for batch in loader:
            if produced == count:
                return
            produced += 1
            yield batch


def calibration_batches(params: Params, data_dir: Path, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The `calibrate.batches` batches of `calibrate.split` (shuffled by `seed`) that the scores are taken over."""
    split = params.get_str("calibrate.split", choices=("train", "val"))
    loader = make_loader(load_split(data_dir, split), params.get_int("data.batch_size", min=1), shuffle=True, seed=seed)
    return _batches(loader, params.get_int("calibrate.batches", min=1))


def score(ir: PruningIR, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, mode: str,
          total: int | None = None, criterion: str = "loss_aware", input_covariance: bool = False) -> None:
    """Fill ``ir``'s scores with `criterion` over `batches` (``loss_aware``: cross-entropy gradients;
    ``magnitude``: weight norms, the batches run forward for the input means; ``input_covariance``: also
    record the input covariances regression compensation needs), the model in `mode` (train|eval); the
    criterion puts back BatchNorm statistics and every other buffer on exit, the model ends on CPU in eval mode."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    model = ir.snapshot("main").model.to(device)
    model.train(mode == "train")
    loss_fn = nn.CrossEntropyLoss()
    loss_aware = criterion == "loss_aware"
    with (LossAwareCriterion if loss_aware else MagnitudeCriterion)(ir, input_covariance=input_covariance) as collector:
        for x, y in tqdm(batches, total=total, desc="calibrate", unit="batch", leave=False, disable=not is_main()):
            out = collector(x.to(device))
            if loss_aware:
                loss_fn(out, y.to(device)).backward()
    model.zero_grad(set_to_none=True)
    model.cpu().eval()


def run(params: Params, data_dir: Path, ir_path: Path, out_path: Path) -> None:
    """Score every label; `calibrate.mode` train|eval sets the model mode, BatchNorm statistics are kept."""
    seed, device = setup(params)
    with process_group(params, device) as device:
        _calibrate(params, seed, device, data_dir, ir_path, out_path)


def _calibrate(params: Params, seed: int, device: torch.device, data_dir: Path, ir_path: Path, out_path: Path) -> None:
    count = params.get_int("calibrate.batches", min=1)
    split = params.get_str("calibrate.split", choices=("train", "val"))
    mode = params.get_str("calibrate.mode", choices=("train", "eval"))
    criterion = params.get_str("calibrate.criterion", choices=CRITERIA)
    covariance = params.get_bool("calibrate.input_covariance")
    ir = load_pickled(ir_path, PruningIR)
    score(ir, shard(calibration_batches(params, data_dir, seed)), device, mode,
          total=len(range(rank(), count, world_size())), criterion=criterion, input_covariance=covariance)
    if is_main():
        print(f"calibrate: {criterion} scores{' and input covariances' if covariance else ''}, {count} {split} "
              f"batches in {mode} mode")
        save_pickled(ir, out_path)
    barrier()
