"""Where the time of an IR build + 50% prune goes, phase by phase (one warm process, medians).

    python -m benchmarks.ir_phases [--models mobilenet_v2 resnet50] [--runs 9] [--threads 1]

Phases, each timed on its own (random weights, 1x3x224x224, the first half of every group pruned):
- ``fx trace``: ``torch.fx`` symbolic tracing of the model (our tracer: leaf modules, soft tracing);
- ``shape pass``: ``record_shapes`` (fake tensors; modules with ``Rule.output_shape`` are not run);
- ``propagation``: channel ids through the rules, labels, groups;
- ``IR id``: the fingerprint (hash of the graph's code and every tensor's name, shape and first
  elements), computed when the first labels are made;
- ``select``: choosing the labels (``zoo.half_of_every_group``), the IR id excluded;
- ``prune``: ``ir.prune`` (label checks, slicing, copying the modules and the graph, rewrites, one
  GraphModule built), of which ``GraphModule`` is building the pruned GraphModule from the copies
  (attribute installation, code generation and compile: torch.fx's fixed cost with the trace).
No GraphModule of the unpruned model is built: an IR that is only pruned never needs one.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
import torchvision
from torch import fx

from pruning import PruningIR
from pruning.channels.propagation import Context
from pruning.ir import fingerprint
from pruning.surgery import _copied_root, _copy_targets, _like, sliced_tensors
from pruning.tracing import record_shapes, trace_graph

from .zoo import half_of_every_group

PHASES = ["fx trace", "shape pass", "propagation", "IR id", "select", "prune", "GraphModule"]


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
        graph, times["fx trace"] = _timed(lambda: trace_graph(model))
        _, times["shape pass"] = _timed(lambda: record_shapes(model, (x,), {}, graph))
        _, times["propagation"] = _timed(lambda: Context(model, graph).run())
        _, times["IR id"] = _timed(lambda: fingerprint(model, graph=graph))
        ir = PruningIR(model, example_input=x)
        ir.uid  # noqa: B018 - computed above as "IR id"
        labels, times["select"] = _timed(lambda: half_of_every_group(ir.snapshot()))
        _, times["prune"] = _timed(lambda: ir.prune(labels=labels))
        snapshot = ir.snapshot()
        keep = np.ones(snapshot.num_labels, dtype=bool)
        keep[[label.index for label in labels]] = False
        sliced = sliced_tensors(model, snapshot.analysis, keep)
        memo = {id(old): _like(old, new) for old, new in sliced.values()}
        copies = _copy_targets(model, snapshot.graph, memo, dict(model.named_modules()))
        new_graph = copy.deepcopy(snapshot.graph, memo)
        holder = _copied_root(model, copies)
        _, times["GraphModule"] = _timed(lambda: fx.GraphModule(holder, new_graph, type(model).__name__))
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
        total = sum(t[p] for p in PHASES[:6])
        fx_share = (t["fx trace"] + t["GraphModule"]) / total
        print(f"| {name} | " + " | ".join(f"{t[p]:.1f}" for p in PHASES) + f" | {total:.1f} | {fx_share:.0%} |")


if __name__ == "__main__":
    main()
