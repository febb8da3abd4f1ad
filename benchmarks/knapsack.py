"""Knapsack with the MACs function on resnet50, mobilenet_v2 and vit_b_16 at 30/50/70% of their MACs.

Prints iterations, seconds and achieved/target, and the kept score (share of the total) of the knapsack
next to uniform and global selection tuned by bisection to the largest pruning at or below the same MACs.
Random weights; calibration on random images with cross-entropy on random targets.
Run: .venv/bin/python benchmarks/knapsack.py [model ...]
"""
from __future__ import annotations

import sys
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
    ir = PruningIR(getattr(torchvision.models, name)(), example_input=torch.randn(*SHAPE))
    with LossAwareCriterion(ir) as collector:
        for _ in range(2):
            F.cross_entropy(collector(torch.randn(4, 3, 224, 224)), torch.randint(0, 1000, (4,))).backward()
    return ir


def kept_share(ir: PruningIR, selected: list) -> float:
    scores = ir.snapshot().scores
    return 1.0 - scores[[label.index for label in selected]].sum().item() / scores.sum().item()


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
          f"{'kept knapsack':>15}{'kept uniform':>14}{'kept global':>13}")
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
                  f"{kept_share(ir, selected):>15.4f}{kept_share(ir, uniform):>14.4f}{kept_share(ir, global_):>13.4f}",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["resnet50", "mobilenet_v2", "vit_b_16"])
