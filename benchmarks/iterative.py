"""One-shot against iterative loss-aware selection at the same MACs target (ours only; an experiment).

    python benchmarks/iterative.py [--data fashion_mnist] [--model default] [--targets 0.3 0.5 0.7]
                                   [--steps 1 3] [--finetune-epochs 1 --seeds 2]

The loss-aware score is a first-order estimate of removing one label; at an aggressive target most of a
group goes at once and the estimate ranks worse (BENCHMARKS.md section 3b: after BatchNorm re-estimation
we trail weight magnitude at 30% MACs). Iterative selection reaches the target in ``steps`` equal MACs
steps: each step builds a ``PruningIR`` of the current model, calibrates it (``quality.calibrate``, the
same batches every step), selects to that step's share of the target (``stages.select._select``), prunes,
and re-estimates BatchNorm statistics before the next step (``finetune.bn_batches`` training batches: data,
no optimizer step). ``--steps 1`` is the one-shot selection of ``quality.py``. Accuracy on the test split
right after the last prune, after BatchNorm re-estimation, and (``--finetune-epochs`` > 0) after
``quality.finetune``'s budget, means over ``--seeds``. Data and models are ``quality.py``'s (cached).
"""
from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402
from pruning import PruningIR, latency  # noqa: E402
from stages.data import load_split, make_loader  # noqa: E402
from stages.params import Params  # noqa: E402
from stages.select import _select  # noqa: E402
from stages.training import accuracy, recalibrate_batchnorm, seed_everything, setup  # noqa: E402


def reestimate(model: nn.Module, params: Params, data_dir: Path, device: torch.device) -> nn.Module:
    """A copy of ``model`` with BatchNorm statistics re-estimated over ``finetune.bn_batches`` batches."""
    model = copy.deepcopy(model)
    seed = params.get_int("seed")
    seed_everything(seed)
    recalibrate_batchnorm(model, quality.train_loader(params, data_dir, seed), device, params.get_int("finetune.bn_batches"))
    return model.eval()


def prune_in_steps(model: nn.Module, example: torch.Tensor, batches: list, params: Params, data_dir: Path,
                   device: torch.device, method: str, target: float, steps: int) -> nn.Module:
    """``model`` pruned to ``target`` of its MACs in ``steps`` equal MACs steps (see the module docstring)."""
    cost = latency.macs(example)
    base = cost(model)
    for step in range(1, steps + 1):
        ir = PruningIR(copy.deepcopy(model), example_input=example)
        quality.calibrate(ir, batches)
        budget = base * (1 - (1 - target) * step / steps)
        model = ir.prune(labels=_select(ir, params, method, cost, budget)).model.eval()
        if step < steps:
            model = reestimate(model, params, data_dir, device)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion_mnist", help="as quality.py --data")
    parser.add_argument("--image-size", type=int, default=14)
    parser.add_argument("--baseline-epochs", type=int, default=10, help="as quality.py (cached model)")
    parser.add_argument("--model", default="default", choices=["default", "wide"])
    parser.add_argument("--targets", nargs="*", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--methods", nargs="*", default=["knapsack", "global"], choices=["uniform", "global", "knapsack"])
    parser.add_argument("--steps", nargs="*", type=int, default=[1, 3])
    parser.add_argument("--finetune-epochs", type=int, default=0, help="0: no fine-tuning")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    params = quality.load_params({"finetune.epochs": max(args.finetune_epochs, 1)})
    _, device = setup(params)
    data_dir = quality.prepared_data(args.data, args.image_size, params)
    model = quality.baseline(args.model, params, data_dir, device, args.baseline_epochs)
    test = make_loader(load_split(data_dir, "test"), 256, shuffle=False, seed=0)
    example = load_split(data_dir, "val").tensors[0][:1]
    batches = quality.calibration_batches(params, data_dir)
    cost = latency.macs(example)
    print(f"{quality.model_label(args.data, args.model)}: unpruned accuracy {accuracy(copy.deepcopy(model), test, device):.3f}")
    print("| target | method | steps | MACs ratio | acc. pruned | acc. after BN re-est. | acc. fine-tuned (range) |")
    print("|---|---|---|---|---|---|---|")
    for target in args.targets:
        for method in args.methods:
            for steps in args.steps:
                pruned = prune_in_steps(model, example, batches, params, data_dir, device, method, target, steps)
                cells = [f"{target:.0%}", method, str(steps), f"{cost(pruned) / cost(model):.3f}",
                         f"{accuracy(copy.deepcopy(pruned), test, device):.3f}",
                         f"{accuracy(reestimate(pruned, params, data_dir, device), test, device):.3f}"]
                if args.finetune_epochs:
                    r = quality.finetune(pruned, params, data_dir, device, test, seeds=args.seeds, short_epochs=0)
                    seeds = r["acc_finetuned_seeds"]
                    cells.append(f"{r['acc_finetuned']:.4f} ({min(seeds):.4f}-{max(seeds):.4f})")
                else:
                    cells.append("")
                print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
