"""Tool speed: our IR build + prune against Torch-Pruning's DependencyGraph build + pruning step.

    python benchmarks/speed.py [--models resnet50 ...] [--repeats 5] [--quick] [--json out.json]
                               [--calibration] [--calibration-repeats 3]

Per model (random weights perturbed by ``pruning.verify.perturb``, 1x3x224x224, one torch thread for
both tools), repeats interleave the tools (ours, peer, then peer, ours, ...) so that a noisy, shared
machine slows both alike; every repeat starts from a fresh deep copy (not timed). Timed:
- ours: build = ``PruningIR(model, example_input=x)`` (tracing + channel analysis);
  prune = choosing the first half of every group (``zoo.half_of_every_group``) + ``ir.prune``;
- peer: build = ``tp.pruner.BasePruner(...)`` (builds the DependencyGraph and the groups);
  prune = ``pruner.step()`` (magnitude importance + surgery) at ``pruning_ratio=0.5``.
Reported: medians of wall-clock seconds and of process CPU seconds (CPU time counts the work of this
process only, so it resists other load on the machine), and ratio ours / peer (< 1: we are faster).

``--calibration`` also runs ``benchmarks/criterion_overhead.py`` (another engineer's script: the cost of
a ``LossAwareCriterion`` step against a plain forward+backward) and returns its printed table.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import peer  # noqa: E402
from pruning import PruningIR  # noqa: E402
from pruning.verify import perturb  # noqa: E402
from zoo import INPUT_SIZE, half_of_every_group  # noqa: E402

MODELS = ["resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0", "vit_b_16", "convnext_tiny"]


class _Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def ours_once(model: torch.nn.Module, x: torch.Tensor) -> dict:
    with _Clock() as build:
        ir = PruningIR(model, example_input=x)
    with _Clock() as prune:
        pruned = ir.prune(labels=half_of_every_group(ir.snapshot())).model
    with torch.no_grad():
        ok = tuple(pruned.eval()(x).shape) == (1, 1000)
    return {"build": (build.wall, build.cpu), "prune": (prune.wall, prune.cpu), "ok": ok}


def peer_once(model: torch.nn.Module, x: torch.Tensor) -> dict:
    with torch.enable_grad():
        with _Clock() as build:
            pruner = peer.build_pruner(model, x, num_classes=1000, ratio=0.5)
        with _Clock() as prune:
            pruned = peer.step(pruner)
    with torch.no_grad():
        ok = tuple(pruned.eval()(x).shape) == (1, 1000)
    return {"build": (build.wall, build.cpu), "prune": (prune.wall, prune.cpu), "ok": ok}


def measure(name: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model = perturb(torchvision.models.get_model(name).eval())
    size = INPUT_SIZE.get(name, 224)
    x = torch.randn(1, 3, size, size)
    runs = {"ours": [], "peer": []}
    functions = {"ours": ours_once, "peer": peer_once}
    for repeat in range(repeats):
        order = ("ours", "peer") if repeat % 2 == 0 else ("peer", "ours")
        for tool in order:
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
    for clock in ("wall", "cpu"):
        row[f"ratio_{clock}"] = row[f"ours_total_{clock}"] / row[f"peer_total_{clock}"]
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | ours build s | ours prune s | peer build s | peer prune s | ours total s | peer total s "
        "| **ratio ours/peer (wall)** | ratio (CPU time) | runs ok (ours/peer) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['ours_build_wall']:.2f} | {r['ours_prune_wall']:.2f} | {r['peer_build_wall']:.2f} | "
            f"{r['peer_prune_wall']:.2f} | {r['ours_total_wall']:.2f} | {r['peer_total_wall']:.2f} | "
            f"**{r['ratio_wall']:.2f}** | {r['ratio_cpu']:.2f} | {'ok' if r['ours_ok'] else 'FAIL'}/"
            f"{'ok' if r['peer_ok'] else 'FAIL'} |"
        )
    return "\n".join(lines)


def calibration_overhead(models: list[str], repeats: int, batch: int) -> str:
    """The printed table of benchmarks/criterion_overhead.py (run as it is, in a subprocess)."""
    command = [sys.executable, str(ROOT / "benchmarks" / "criterion_overhead.py"), *models,
               "--repeats", str(repeats), "--batch", str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
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
    for name in models:
        rows.append(measure(name, repeats))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(markdown(rows))
    result = {"rows": rows}
    if args.calibration:
        cal_models = args.calibration_models[:1] if args.quick else args.calibration_models
        cal_repeats = 2 if args.quick else args.calibration_repeats
        result["calibration"] = calibration_overhead(cal_models, cal_repeats, args.calibration_batch)
        result["calibration_command"] = (f"PYTHONPATH=. .venv/bin/python benchmarks/criterion_overhead.py {' '.join(cal_models)} "
                                         f"--repeats {cal_repeats} --batch {args.calibration_batch}")
        print(result["calibration"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
