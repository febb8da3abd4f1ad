"""Coverage: every torchvision classification model through both tools at 50% uniform pruning.

    python -m benchmarks.coverage_table [--models resnet18 vit_b_32 ...] [--quick] [--timeout 900] [--jobs 2]
                                        [--json benchmarks/results/coverage.json] [--markdown coverage.md]

Per model, in a fresh subprocess each (so a crash, a hang or memory growth in one model cannot stop
the table; a subprocess past ``--timeout`` seconds is killed and reported as a timeout), random weights
(``pruning.verify.perturb``, seed 0), 1x3x224x224 input (299 for inception_v3), classifier kept:
- ours: ``PruningIR(model, example_input=x)``, the first half of every prunable group
  (``benchmarks/zoo.py``'s ``half_of_every_group``), ``ir.prune``;
- peer: Torch-Pruning ``BasePruner`` with ``MagnitudeImportance`` at ``pruning_ratio=0.5`` (per layer),
  classifier in ``ignored_layers`` (``benchmarks/peer.py``).
ok = the pruned model runs and its output has shape (1, 1000). The two tools run back to back per
model. ``--quick`` runs a representative dozen.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0", "convnext_tiny", "vit_b_32",
         "swin_t", "shufflenet_v2_x0_5", "squeezenet1_0", "googlenet", "regnet_x_400mf", "maxvit_t"]


def _child(name: str, tool: str) -> dict:
    """Runs in the subprocess: one model through one tool."""
    warnings.filterwarnings("ignore")
    import torch
    import torchvision

    from pruning.verify import perturb

    from .zoo import INPUT_SIZE, half_of_every_group

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = perturb(torchvision.models.get_model(name).eval())
    size = INPUT_SIZE.get(name, 224)
    x = torch.randn(1, 3, size, size)
    before = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()
    if tool == "ours":
        from pruning import PruningIR

        ir = PruningIR(model, example_input=x)
        pruned = ir.prune(labels=half_of_every_group(ir.snapshot())).model
    else:
        from . import peer

        with torch.enable_grad():
            pruned = peer.prune(model, x, num_classes=1000, ratio=0.5, copy_model=False)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        out = pruned.eval()(x)
    shape = tuple(out.shape)
    return {"ok": shape == (1, 1000), "error": None if shape == (1, 1000) else f"output shape {shape}",
            "seconds": seconds, "params": sum(p.numel() for p in pruned.parameters()) / before}


def run_one(name: str, tool: str, timeout: float) -> dict:
    """One model through one tool in a subprocess; never raises."""
    command = [sys.executable, "-m", __spec__.name, "--child", name, tool]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {timeout:.0f}s", "seconds": None, "params": None}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = [line for line in done.stderr.strip().splitlines() if line.strip()]
    error = tail[-1] if tail else f"exit code {done.returncode}"
    if done.returncode < 0:
        error = f"killed by signal {-done.returncode} (out of memory?)"
    return {"ok": False, "error": error[:300], "seconds": None, "params": None,
            "wall": time.perf_counter() - started}


def run(models: list[str], timeout: float, jobs: int, progress=print, save: Path | None = None,
        resume: bool = False) -> list[dict]:
    """Both tools on every model; with ``save`` the rows so far are written after each model, and with
    ``resume`` the models already in ``save`` are not run again."""
    done = {}
    if resume and save is not None and save.exists():
        done = {row["model"]: row for row in json.loads(save.read_text())}
    lock = threading.Lock()

    def both(name: str) -> dict:
        if name in done:
            return done[name]
        row = {"model": name, "ours": run_one(name, "ours", timeout), "peer": run_one(name, "peer", timeout)}
        with lock:
            done[name] = row
            progress(format_row(row))
            if save is not None:
                save.parent.mkdir(parents=True, exist_ok=True)
                save.write_text(json.dumps([done[m] for m in models if m in done], indent=1))
        return row

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(both, models))


def _cell(result: dict) -> str:
    if result["ok"]:
        return f"ok ({result['params']:.2f} params, {result['seconds']:.1f}s)"
    return "**error**: " + result["error"].replace("|", "\\|")


def format_row(row: dict) -> str:
    return f"| {row['model']} | {_cell(row['ours'])} | {_cell(row['peer'])} |"


def markdown(rows: list[dict]) -> str:
    lines = ["| model | ours | Torch-Pruning |", "|---|---|---|"] + [format_row(r) for r in rows]
    ours = sum(r["ours"]["ok"] for r in rows)
    peer = sum(r["peer"]["ok"] for r in rows)
    lines += ["", f"**ok: ours {ours}/{len(rows)}, Torch-Pruning {peer}/{len(rows)}.** "
              "Cells: parameter ratio after pruning and seconds to build + prune (one run, one thread, "
              "not a timing benchmark: see tool speed)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="default: all of torchvision.models.list_models(module=torchvision.models)")
    parser.add_argument("--quick", action="store_true", help=f"only {len(QUICK)} representative models")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per model and tool (default 900)")
    parser.add_argument("--jobs", type=int, default=2, help="models in parallel (default 2)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON (after every model)")
    parser.add_argument("--resume", action="store_true", help="keep the models already in --json, run the rest")
    parser.add_argument("--markdown", type=Path, help="write the table as markdown")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "TOOL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child)), flush=True)
        return
    import torchvision

    models = args.models or (QUICK if args.quick else torchvision.models.list_models(module=torchvision.models))
    rows = run(models, args.timeout, args.jobs, progress=lambda line: print(line, flush=True), save=args.json,
               resume=args.resume)
    table = markdown(rows)
    print("\n" + table.splitlines()[-1])
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
