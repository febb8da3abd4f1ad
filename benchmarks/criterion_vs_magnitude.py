"""Loss-aware (group Taylor) scores against plain weight magnitude, on the pipeline's trained model.

    .venv/bin/python -m benchmarks.criterion_vs_magnitude   # after `make run`

Both score sets go through the same selector, so only the ranking differs. Magnitude of a label = sum of
the squares of every parameter element it owns (its filters, their norm parameters, the consumers'
input slices: the group magnitude Torch-Pruning uses). Prints test accuracy right after pruning (no
fine-tuning), as pruned and after re-estimating BatchNorm statistics on 20 training batches (no gradient
step), for uniform and global selection at several ratios.
"""
from __future__ import annotations

import argparse

import torch

from pruning.nodes import get_tensor
from pruning.selectors import GlobalScoreLabelSelector, UniformLabelSelector
from stages.artifacts import load_pickled
from stages.data import load_split, make_loader
from stages.training import recalibrate_batchnorm
from pruning import PruningIR

IR_PATH = "artifacts/ir_calibrated.pt"  # written by the pipeline's calibrate stage (our own file)


def magnitude_scores(ir: PruningIR) -> torch.Tensor:
    snapshot = ir.snapshot()
    scores = torch.zeros(snapshot.num_labels, dtype=torch.float64)
    for site in snapshot.param_sites:
        tensor = get_tensor(snapshot.model, site.name)
        if not isinstance(tensor, torch.nn.Parameter):
            continue
        dims = [d for d in range(tensor.dim()) if d != site.dim]
        per_element = tensor.detach().double().square().sum(dim=dims) if dims else tensor.detach().double().square()
        scores.index_add_(0, torch.from_numpy(site.label_index), per_element)
    return scores


@torch.no_grad()
def accuracy(model: torch.nn.Module, data) -> float:
    x, y = data.tensors
    return (model.eval()(x).argmax(1) == y).float().mean().item()


def main() -> None:
    ir = load_pickled(IR_PATH, PruningIR)
    snapshot = ir.snapshot()
    taylor = snapshot.scores.clone()
    magnitude = magnitude_scores(ir)
    test = load_split("data/prepared", "test")
    train = make_loader(load_split("data/prepared", "train"), 64, shuffle=True, seed=0)
    print(f"baseline test accuracy {accuracy(ir.model, test):.4f} ({len(test)} images)")
    print(f"{'selector':<10}{'ratio':>7}{'taylor':>9}{'magnitude':>11}{'taylor+BN':>11}{'magnitude+BN':>14}")
    for name, make in (("uniform", UniformLabelSelector), ("global", GlobalScoreLabelSelector)):
        for ratio in (0.3, 0.5, 0.7):
            row, with_bn = [], []
            for scores in (taylor, magnitude):
                snapshot.scores = scores
                pruned = ir.prune(labels=make(ratio).select(ir)).model
                row.append(accuracy(pruned, test))
                recalibrate_batchnorm(pruned, train, torch.device("cpu"), 20)
                with_bn.append(accuracy(pruned, test))
            print(f"{name:<10}{ratio:>7.0%}{row[0]:>9.4f}{row[1]:>11.4f}{with_bn[0]:>11.4f}{with_bn[1]:>14.4f}")
    snapshot.scores = taylor


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
