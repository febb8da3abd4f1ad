"""Knapsack with the MACs function on resnet50, mobilenet_v2 and vit_b_16 at 30/50/70% of their MACs.

Prints iterations, seconds and achieved/target, and the score each selection removes (share of the total
score; lower is better) for the knapsack and for uniform and global selection tuned by bisection to the
least pruning whose MACs are at or below the knapsack's achieved MACs.
Random weights (torchvision zero-initialises the ViT head, which would zero every gradient, so it is
re-drawn); calibration on random images with cross-entropy on random targets.
Run from the repository root: .venv/bin/python -m benchmarks.knapsack [model ...]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision

from pruning import PruningIR
from pruning.criterion import LossAwareCriterion
from pruning.latency import macs
from pruning.selectors import GlobalScoreLabelSelector, KnapsackLabelSelector, UniformLabelSelector

SHAPE = (1, 3, 224, 224)


def calibrated_ir(name: str) -> PruningIR:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)()
    if name.startswith("vit"):
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    ir = PruningIR(model, example_input=torch.randn(*SHAPE))
    with LossAwareCriterion(ir) as collector:
        for _ in range(2):
            F.cross_entropy(collector(torch.randn(4, 3, 224, 224)), torch.randint(0, 1000, (4,))).backward()
    return ir


def lost_share(ir: PruningIR, selected: list) -> float:
    scores = ir.snapshot().scores
    return scores[[label.index for label in selected]].sum().item() / scores.sum().item()


def best_under(ir: PruningIR, flops, budget: float, make, low: float, high: float, steps: int = 12) -> list:
    """Bisect the selector parameter for the least pruning whose MACs are <= budget."""
    best = make(high).select(ir)
    for _ in range(steps):
        middle = (low + high) / 2
        selected = make(middle).select(ir)
        if flops(ir.prune(labels=selected).model) <= budget:
            best, high = selected, middle
        else:
            low = middle
    return best


def main(names: list[str]) -> None:
    print(f"{'model':<13}{'target':>7}{'iters':>6}{'seconds':>9}{'achieved/target':>16}"
          f"{'lost knapsack':>15}{'lost uniform':>14}{'lost global':>13}")
    for name in names:
        ir = calibrated_ir(name)
        flops = macs(SHAPE)
        total = flops(ir.model)
        prunable = len(ir.snapshot().labels) - len(ir.snapshot().groups)
        for fraction in (0.3, 0.5, 0.7):
            target = fraction * total
            selector = KnapsackLabelSelector(target, flops, verbose=False)
            started = time.perf_counter()
            selected = selector.select(ir)
            seconds = time.perf_counter() - started
            achieved = flops(ir.prune(labels=selected).model)
            uniform = best_under(ir, flops, achieved, UniformLabelSelector, 0.0, 0.99)
            global_ = best_under(ir, flops, achieved, lambda n: GlobalScoreLabelSelector(max(1, round(n))),
                                 1, prunable)
            print(f"{name:<13}{fraction:>7.0%}{len(selector.history):>6}{seconds:>9.1f}{achieved / target:>16.4f}"
                  f"{lost_share(ir, selected):>15.3e}{lost_share(ir, uniform):>14.3e}{lost_share(ir, global_):>13.3e}",
                  flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["resnet50", "mobilenet_v2", "vit_b_16"],
                        help="torchvision model names (default: resnet50 mobilenet_v2 vit_b_16)")
    main(parser.parse_args().models)
