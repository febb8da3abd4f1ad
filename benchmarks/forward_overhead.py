"""Forward time of our GraphModules against the eager model, and of our pruned model against the peer's.

    python -m benchmarks.forward_overhead [--models digits resnet18 ...] [--rounds 30] [--seconds 0.1]

Our pruned models are ``torch.fx.GraphModule``s; Torch-Pruning's are the original classes with their own
forward. At batch 1 the Python of a forward is a visible part of a small model's time, so this measures
(CPU, one torch thread, batch 1, random weights, eval mode; ``--rounds`` rounds, each timing one block of
about ``--seconds`` of calls of every model of a row in turn, the order rotating, so that a shared machine's
load falls on all alike; a block's time is the median of its calls after a warm-up, a model's the median of
its blocks):
- unpruned: the eager model; the same traced graph as fx writes its code ("fx code"); as we write it
  (``PruningIR(model).model``: repeated submodule paths looked up once per call,
  :mod:`pruning.tracing.codegen`);
- pruned, half of every group by weight magnitude (ours: ``MagnitudeCriterion`` + ``UniformLabelSelector(0.5)``,
  no compensation; peer: ``MagnitudeImportance``, ``pruning_ratio=0.5``, classifier kept): the peer's
  model, ours as fx writes the code, and ours. "same widths" says whether both have the same tensor shapes
  (then the time ratio compares the forwards alone).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch
import torchvision
from torch import fx, nn

from pruning import PruningIR, UniformLabelSelector, latency
from pruning.magnitude import MagnitudeCriterion
from stages.models import DigitsResNet

from . import peer

MODELS = ["digits", "resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0"]


def build(name: str) -> tuple[nn.Module, torch.Tensor, int]:
    """The model (eval mode, seeded random weights), a batch-1 input and its number of classes."""
    torch.manual_seed(0)
    if name == "digits":  # the pipeline's default model
        return DigitsResNet(width=32).eval(), torch.randn(1, 1, 8, 8), 10
    return getattr(torchvision.models, name)(num_classes=1000).eval(), torch.randn(1, 3, 224, 224), 1000


def fx_code(model: fx.GraphModule) -> fx.GraphModule:
    """``model``'s graph compiled with fx's own code generation (sharing ``model``'s submodules)."""
    with model.graph.on_generate_code(lambda _: None):
        return fx.GraphModule(model, model.graph, type(model).__name__)


def variants(name: str) -> tuple[dict[str, nn.Module], torch.Tensor, bool]:
    model, x, classes = build(name)
    ir = PruningIR(copy.deepcopy(model), example_input=x)
    with MagnitudeCriterion(ir) as collector:
        collector(x)
    ours = ir.prune(labels=UniformLabelSelector(0.5).select(ir), compensate=False).model.eval()
    theirs = peer.prune(model, x, num_classes=classes, ratio=0.5).eval()
    same = ({k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()})
    models = {"eager": model, "fx code": fx_code(ir.model), "ours traced": ir.model,
              "peer pruned": theirs, "ours pruned, fx code": fx_code(ours), "ours pruned": ours}
    return models, x, same


def measure(name: str, rounds: int, seconds: float) -> dict:
    models, x, same = variants(name)
    once = latency.measured_latency(x, warmup=1, repeats=3)(models["eager"]) / 1000
    repeats = max(5, round(seconds / once))  # a block of about `seconds` of calls, however fast the model
    timer = latency.measured_latency(x, warmup=max(2, repeats // 4), repeats=repeats)
    keys = list(models)
    samples: dict[str, list[float]] = {key: [] for key in keys}
    for number in range(rounds):
        shift = number % len(keys)
        for key in keys[shift:] + keys[:shift]:  # one block of each model in turn, the order rotating
            samples[key].append(timer(models[key]))
    return {"model": name, "same_widths": same, **{key: statistics.median(v) for key, v in samples.items()}}


def table(rows: list[dict]) -> str:
    lines = ["| model | eager ms | fx code / eager | ours traced / eager | peer pruned ms | "
             "ours pruned, fx code / peer | ours pruned / peer | same widths |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['eager']:.3f} | {r['fx code'] / r['eager']:.3f} | "
                     f"{r['ours traced'] / r['eager']:.3f} | {r['peer pruned']:.3f} | "
                     f"{r['ours pruned, fx code'] / r['peer pruned']:.3f} | {r['ours pruned'] / r['peer pruned']:.3f} | "
                     f"{'yes' if r['same_widths'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, help="'digits' or torchvision model names")
    parser.add_argument("--rounds", type=int, default=30, help="blocks per model (the median of their times)")
    parser.add_argument("--seconds", type=float, default=0.1, help="about this long of calls per block")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        rows.append(measure(name, args.rounds, args.seconds))
        print(f"{name}: done", file=sys.stderr)
    print(table(rows))


if __name__ == "__main__":
    main()
