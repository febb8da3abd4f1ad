"""Cost of a LossAwareCriterion calibration step against a plain forward+backward of the same model.

Both steps run the snapshot's model on the same batch with cross-entropy on random targets; the
calibrated step is the second collector call inside the block, so it includes folding the previous batch.
Repeats alternate plain and calibrated steps; medians of wall-clock and of process CPU time (the
better measure of work when other processes share the cores) and their ratios are printed.
``--input-covariance`` calibrates with ``LossAwareCriterion(ir, input_covariance=True)`` (the products
regression compensation needs).
Run from the repository root: .venv/bin/python -m benchmarks.criterion_overhead [--batch N] [--repeats N] [--input-covariance] [model ...]
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


def step(forward, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one forward+backward (CPU time resists a shared machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    F.cross_entropy(forward(x), y).backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*", default=["resnet50", "vit_b_16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--input-covariance", action="store_true", help="record input covariances too")
    args = parser.parse_args()
    print(f"device {args.device}, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.repeats}"
          + (", with input covariances" if args.input_covariance else ""))
    print(f"{'model':<12}{'plain wall s':>14}{'calib wall s':>14}{'ratio':>7}"
          f"{'plain cpu s':>13}{'calib cpu s':>13}{'ratio':>7}")
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
            with LossAwareCriterion(ir, input_covariance=args.input_covariance) as collector:
                step(collector, x, y)
                calibrated.append(step(collector, x, y))
        wall = [statistics.median(t[0] for t in runs) for runs in (plain, calibrated)]
        cpu = [statistics.median(t[1] for t in runs) for runs in (plain, calibrated)]
        print(f"{name:<12}{wall[0]:>14.3f}{wall[1]:>14.3f}{wall[1] / wall[0]:>7.3f}"
              f"{cpu[0]:>13.3f}{cpu[1]:>13.3f}{cpu[1] / cpu[0]:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
