"""Where the time of an IR build + 50% prune goes, phase by phase (one warm process, medians).

    python benchmarks/ir_phases.py [--models mobilenet_v2 resnet50] [--runs 9] [--threads 1]

Phases, each timed on its own (random weights, 1x3x224x224, the first half of every group pruned):
- ``fx trace``: ``torch.fx`` symbolic tracing of the model (our tracer: leaf modules, soft tracing);
- ``GraphModule``: turning the graph into a runnable ``fx.GraphModule`` (attribute copies + code generation);
- ``fingerprint``: the IR id (hash of the code and every tensor's name, shape and first elements);
- ``shape pass``: ``record_shapes`` (fake tensors; modules with ``Rule.output_shape`` are not run);
- ``propagation``: channel ids through the rules, labels, groups;
- ``select``: choosing the labels (``zoo.half_of_every_group``);
- ``prune``: ``ir.prune`` (label checks, slicing, copy, rewrites, new fingerprint), of which ``module copy``
  is copying the submodules (the sliced tensors already in the memo, as ``ir.prune`` does) and
  ``GraphModule copy`` is ``copy.deepcopy`` of the GraphModule with those copies in its memo (its graph and a
  fresh code generation).
Tracing and the two GraphModule constructions are torch.fx's fixed cost; the rest is ours.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import fx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from pruning import PruningIR  # noqa: E402
from pruning.channels.propagation import Context  # noqa: E402
from pruning.ir import fingerprint  # noqa: E402
from pruning.surgery import _copy_module, _like, sliced_tensors  # noqa: E402
from pruning.tracing import record_shapes  # noqa: E402
from pruning.tracing.tracer import _Tracer  # noqa: E402
from zoo import half_of_every_group  # noqa: E402

PHASES = ["fx trace", "GraphModule", "fingerprint", "shape pass", "propagation", "select", "prune",
          "module copy", "GraphModule copy"]


def _timed(function):
    started = time.perf_counter()
    result = function()
    return result, (time.perf_counter() - started) * 1000


def measure(name: str, runs: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, 224, 224)
    samples: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for run in range(runs + 1):  # the first run warms caches and is dropped
        times = {}
        graph, times["fx trace"] = _timed(lambda: _Tracer().trace(model))
        graph_module, times["GraphModule"] = _timed(lambda: fx.GraphModule(model, graph, type(model).__name__))
        _, times["fingerprint"] = _timed(lambda: fingerprint(graph_module))
        _, times["shape pass"] = _timed(lambda: record_shapes(graph_module, (x,), {}))
        _, times["propagation"] = _timed(lambda: Context(graph_module).run())
        ir = PruningIR(model, example_input=x)
        labels, times["select"] = _timed(lambda: half_of_every_group(ir.snapshot()))
        _, times["prune"] = _timed(lambda: ir.prune(labels=labels))
        traced, analysis = ir.model, ir.snapshot().analysis
        keep = np.ones(analysis.num_labels, dtype=bool)
        keep[[label.index for label in labels]] = False
        memo = {id(old): _like(old, new) for old, new in sliced_tensors(traced, analysis, keep).values()}
        _, times["module copy"] = _timed(lambda: [_copy_module(child, memo) for child in traced.children()])
        _, times["GraphModule copy"] = _timed(lambda: copy.deepcopy(traced, memo))
        if run:
            for phase, value in times.items():
                samples[phase].append(value)
    return {phase: statistics.median(values) for phase, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["mobilenet_v2", "efficientnet_b0", "resnet50"])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | " + " | ".join(f"{p} ms" for p in PHASES) + " | build + select + prune ms | torch.fx share |")
    print("|---|" + "---|" * (len(PHASES) + 2))
    for name in args.models:
        t = measure(name, args.runs)
        total = sum(t[p] for p in PHASES[:7])
        fx_share = (t["fx trace"] + t["GraphModule"] + t["GraphModule copy"]) / total
        print(f"| {name} | " + " | ".join(f"{t[p]:.1f}" for p in PHASES) + f" | {total:.1f} | {fx_share:.0%} |")


if __name__ == "__main__":
    main()
