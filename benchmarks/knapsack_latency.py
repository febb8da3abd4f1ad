"""Knapsack to a measured CPU latency target: resnet50 at 30/50/70% of its measured latency.

    .venv/bin/python -m benchmarks.knapsack_latency [--threads 2]

The selector sees `pruning.latency.measured_latency` (median ms of batch-1 forward passes) and keeps channel
counts at multiples of 16 (CPU convolutions run markedly slower at odd widths, which makes latency
non-monotone in the kept channels). Afterwards the selected model's latency is measured again,
independently, with more repeats, and compared with the target.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision

from pruning import PruningIR
from pruning.criterion import LossAwareCriterion
from pruning.latency import measured_latency
from pruning.selectors import ChannelsConstraint, KnapsackLabelSelector

SHAPE = (1, 3, 224, 224)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="resnet50")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ir = PruningIR(torchvision.models.get_model(args.model).eval(), example_input=torch.randn(*SHAPE))
    with LossAwareCriterion(ir) as collector:
        for _ in range(2):
            F.cross_entropy(collector(torch.randn(4, *SHAPE[1:])), torch.randint(0, 1000, (4,))).backward()
    latency = measured_latency(SHAPE, warmup=3, repeats=15)
    check = measured_latency(SHAPE, warmup=5, repeats=50)
    baseline = check(ir.model)
    print(f"{args.model}: baseline {baseline:.1f} ms (median of 50, batch 1, {args.threads} threads)")
    print(f"{'target':>7}{'iters':>6}{'seconds':>9}{'target ms':>11}{'achieved ms':>13}{'achieved/target':>17}")
    for fraction in (0.7, 0.5, 0.3):
        target = fraction * baseline
        selector = KnapsackLabelSelector(target, latency, verbose=False,
                                         channels_constraint=ChannelsConstraint(multiple_of=16))
        started = time.perf_counter()
        labels = selector.select(ir)
        seconds = time.perf_counter() - started
        achieved = check(ir.prune(labels=labels).model)
        print(f"{fraction:>7.0%}{len(selector.history):>6}{seconds:>9.1f}{target:>11.1f}{achieved:>13.1f}"
              f"{achieved / target:>17.3f}", flush=True)


if __name__ == "__main__":
    main()
