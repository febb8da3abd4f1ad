"""Cost of a LossAwareCriterion calibration step against a plain forward+backward of the same model.

Both steps run the snapshot's model on the same batch with cross-entropy on random targets; the
calibrated step is the second collector call inside the block, so it includes folding the previous batch.
Repeats alternate plain and calibrated steps; medians and their ratio are printed.
Run: .venv/bin/python benchmarks/criterion_overhead.py [--batch N] [--repeats N] [model ...]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

from pruning import PruningIR
from pruning.criterion import LossAwareCriterion


def step(forward, x: torch.Tensor, y: torch.Tensor) -> float:
    started = time.perf_counter()
    F.cross_entropy(forward(x), y).backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=["resnet50", "vit_b_16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"device {args.device}, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'model':<12}{'plain s':>10}{'calibration s':>15}{'ratio':>8}")
    for name in args.models:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().to(args.device)
        x = torch.randn(args.batch, 3, 224, 224, device=args.device)
        y = torch.randint(0, 1000, (args.batch,), device=args.device)
        ir = PruningIR(model, example_input=x[:1])
        plain_model = ir.snapshot().model
        step(plain_model, x, y)  # warm-up
        plain, calibrated = [], []
        for _ in range(args.repeats):
            plain.append(step(plain_model, x, y))
            with LossAwareCriterion(ir) as collector:
                step(collector, x, y)
                calibrated.append(step(collector, x, y))
        p, c = statistics.median(plain), statistics.median(calibrated)
        print(f"{name:<12}{p:>10.3f}{c:>15.3f}{c / p:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
