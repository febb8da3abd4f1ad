"""Tool speed: our IR build + prune against Torch-Pruning's DependencyGraph build + pruning step.

    python -m benchmarks.speed [--models resnet50 ...] [--repeats 5] [--quick] [--json out.json]
                               [--calibration] [--calibration-repeats 3]

Per model (random weights perturbed by ``pruning.verify.perturb``, 1x3x224x224, one torch thread for
both tools), repeats interleave the tools (the order rotates each repeat) so that a noisy, shared
machine slows all alike; every model is measured in a fresh interpreter and every repeat starts from a
fresh deep copy (not timed). Timed:
- ours: build = ``PruningIR(model, example_input=x)`` (tracing + channel analysis);
  prune = choosing the first half of every group (``zoo.half_of_every_group``) + ``ir.prune``,
  once as a pruned copy (the default; the model is left as it was) and once with ``inplace=True``;
- peer: build = ``tp.pruner.BasePruner(...)`` (builds the DependencyGraph and the groups);
  prune = ``pruner.step()`` (magnitude importance + surgery) at ``pruning_ratio=0.5``. Torch-Pruning
  prunes the model it is given in place; to keep the original a user deep-copies it first, so the
  peer's copy time is ``copy.deepcopy(model)`` + build + step (the deepcopy timed in the same repeat).
Like for like: ``ratio`` = ours (copy) / peer (deepcopy + prune), ``ratio_inplace`` = ours (in place)
/ peer (in place). ``ratio_mixed`` = ours (copy) / peer (in place), the comparison of earlier reports,
is kept for continuity. Reported: medians of wall-clock seconds and of process CPU seconds (CPU time
counts the work of this process only, so it resists other load on the machine); < 1: we are faster.

``--calibration`` also runs ``benchmarks/criterion_overhead.py`` (another engineer's script: the cost of
a ``LossAwareCriterion`` step against a plain forward+backward) and returns its printed table.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision

from pruning import PruningIR
from pruning.verify import perturb

from . import peer
from .zoo import INPUT_SIZE, half_of_every_group

ROOT = Path(__file__).resolve().parents[1]

MODELS = ["resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0", "vit_b_16", "convnext_tiny"]


class _Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def ours_once(model: torch.nn.Module, x: torch.Tensor, inplace: bool = False) -> dict:
    with _Clock() as build:
        ir = PruningIR(model, example_input=x)
    with _Clock() as prune:
        pruned = ir.prune(labels=half_of_every_group(ir.snapshot()), inplace=inplace).model
    with torch.no_grad():
        ok = tuple(pruned.eval()(x).shape) == (1, 1000)
    return {"build": (build.wall, build.cpu), "prune": (prune.wall, prune.cpu), "ok": ok}


def ours_inplace_once(model: torch.nn.Module, x: torch.Tensor) -> dict:
    return ours_once(model, x, inplace=True)


def peer_once(model: torch.nn.Module, x: torch.Tensor) -> dict:
    with _Clock() as copying:
        copy.deepcopy(model)  # what a user who keeps the original pays before pruning in place
    with torch.enable_grad():
        with _Clock() as build:
            pruner = peer.build_pruner(model, x, num_classes=1000, ratio=0.5)
        with _Clock() as prune:
            pruned = peer.step(pruner)
    with torch.no_grad():
        ok = tuple(pruned.eval()(x).shape) == (1, 1000)
    return {"build": (build.wall, build.cpu), "prune": (prune.wall, prune.cpu), "copy": (copying.wall, copying.cpu),
            "ok": ok}


def measure(name: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model = perturb(torchvision.models.get_model(name).eval())
    size = INPUT_SIZE.get(name, 224)
    x = torch.randn(1, 3, size, size)
    functions = {"ours": ours_once, "ours_inplace": ours_inplace_once, "peer": peer_once}
    runs: dict[str, list] = {tool: [] for tool in functions}
    tools = list(functions)
    for repeat in range(repeats):
        for tool in tools[repeat % 3:] + tools[:repeat % 3]:
            fresh = copy.deepcopy(model)
            gc.collect()
            runs[tool].append(functions[tool](fresh, x))
            del fresh
    row = {"model": name, "repeats": repeats}
    for tool, results in runs.items():
        for phase in ("build", "prune"):
            for k, clock in enumerate(("wall", "cpu")):
                row[f"{tool}_{phase}_{clock}"] = statistics.median(r[phase][k] for r in results)
        for k, clock in enumerate(("wall", "cpu")):
            row[f"{tool}_total_{clock}"] = statistics.median(r["build"][k] + r["prune"][k] for r in results)
        row[f"{tool}_ok"] = all(r["ok"] for r in results)
    for k, clock in enumerate(("wall", "cpu")):
        row[f"peer_copy_{clock}"] = statistics.median(r["copy"][k] for r in runs["peer"])
        row[f"peer_copy_total_{clock}"] = statistics.median(r["copy"][k] + r["build"][k] + r["prune"][k]
                                                            for r in runs["peer"])
        row[f"ratio_{clock}"] = row[f"ours_total_{clock}"] / row[f"peer_copy_total_{clock}"]
        row[f"ratio_inplace_{clock}"] = row[f"ours_inplace_total_{clock}"] / row[f"peer_total_{clock}"]
        row[f"ratio_mixed_{clock}"] = row[f"ours_total_{clock}"] / row[f"peer_total_{clock}"]
    return row


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | ours build s | ours prune s (copy / in place) | peer build s | peer prune s | peer deepcopy s "
        "| ours copy total s | peer deepcopy + prune s | **ratio, copies (wall)** | ours in place total s "
        "| peer in place total s | **ratio, in place (wall)** | ratios in CPU time (copies / in place) "
        "| ours copy / peer in place (wall) | runs ok (ours/in place/peer) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "/".join("ok" if r[f"{tool}_ok"] else "FAIL" for tool in ("ours", "ours_inplace", "peer"))
        lines.append(
            f"| {r['model']} | {r['ours_build_wall']:.3f} | {r['ours_prune_wall']:.3f} / {r['ours_inplace_prune_wall']:.3f} "
            f"| {r['peer_build_wall']:.3f} | {r['peer_prune_wall']:.3f} | {r['peer_copy_wall']:.3f} "
            f"| {r['ours_total_wall']:.3f} | {r['peer_copy_total_wall']:.3f} | **{r['ratio_wall']:.2f}** "
            f"| {r['ours_inplace_total_wall']:.3f} | {r['peer_total_wall']:.3f} | **{r['ratio_inplace_wall']:.2f}** "
            f"| {r['ratio_cpu']:.2f} / {r['ratio_inplace_cpu']:.2f} | {r['ratio_mixed_wall']:.2f} | {ok} |"
        )
    return "\n".join(lines)


def calibration_overhead(models: list[str], repeats: int, batch: int) -> str:
    """The printed table of ``benchmarks.criterion_overhead`` (run as it is, in a subprocess)."""
    command = [sys.executable, "-m", "benchmarks.criterion_overhead", *models,
               "--repeats", str(repeats), "--batch", str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return f"criterion_overhead.py failed (exit {done.returncode}):\n" + done.stderr[-2000:]
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--repeats", type=int, default=5, help="runs per tool and model (median)")
    parser.add_argument("--quick", action="store_true", help="resnet50 and mobilenet_v2, 2 repeats")
    parser.add_argument("--calibration", action="store_true", help="also run benchmarks/criterion_overhead.py")
    parser.add_argument("--calibration-models", nargs="*", default=["resnet50", "vit_b_16"])
    parser.add_argument("--calibration-repeats", type=int, default=5)
    parser.add_argument("--calibration-batch", type=int, default=8)
    parser.add_argument("--json", type=Path, help="write the rows (and the calibration table) as JSON")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    models, repeats = (["resnet50", "mobilenet_v2"], 2) if args.quick else (args.models, args.repeats)
    rows = []
    # Each model in a fresh interpreter, as a user prunes one model per process: a long benchmark
    # process accumulates objects from earlier models, and every garbage collection during a timed
    # run then walks them (measured: mobilenet_v2 0.44 alone, 0.50 after resnet50 and densenet121).
    context = multiprocessing.get_context("spawn")
    for name in models:
        with context.Pool(1, initializer=_quiet) as pool:
            rows.append(pool.apply(measure, (name, repeats)))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(markdown(rows))
    result = {"rows": rows}
    if args.calibration:
        cal_models = args.calibration_models[:1] if args.quick else args.calibration_models
        cal_repeats = 2 if args.quick else args.calibration_repeats
        result["calibration"] = calibration_overhead(cal_models, cal_repeats, args.calibration_batch)
        result["calibration_command"] = (f".venv/bin/python -m benchmarks.criterion_overhead {' '.join(cal_models)} "
                                         f"--repeats {cal_repeats} --batch {args.calibration_batch}")
        print(result["calibration"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
