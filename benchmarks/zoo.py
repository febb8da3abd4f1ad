"""Every torchvision model through PruningIR: build, prune 50% of every group, check.

    python -m benchmarks.zoo [--models resnet18 vit_b_32 ...] [--markdown zoo.md]
    python -m benchmarks.zoo --families detection segmentation video optical_flow [--markdown tasks.md]

Per model (random weights, perturbed so that no layer is all zero, run once in eval mode on its input
before the IR is built, as users do): prunable labels, groups, unprunable labels, IR build and prune
seconds (median of --repeats), the share of parameters removed and the MACs left after pruning the first
half of every group (``half_of_every_group``: what ``UniformLabelSelector(0.5)`` removes), where under a
third of the parameters go why (``why_little``), whether the pruned model runs with the right output shape,
and the equivalence error (labels made dead then pruned, compared in float64 so that float32 rounding
in very deep models does not hide or fake a slicing error; see ``pruning.verify``; float32, marked,
where the model itself makes float32 tensors).

``--families`` (default: classification) takes torchvision's model families: their example inputs are
``FAMILIES``' (a detector gets a list of one 224x224 image and its score threshold at 0, and a tenth of the
noise, so that its output holds boxes: perturbed as much as the others, the ResNet-50 R-CNNs propose no
region, and an empty output would make the check vacuous, so a detector that returns no box fails its row;
a video model 16 frames; RAFT two 128x128 images). For the other families "runs"
means that the pruned model's output has the original's structure and shapes (a detector's number of
boxes may differ), and a column names the ops no rule understands (a detector's heads).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision

from pruning import PruningIR
from pruning.latency import macs
from pruning.verify import equivalence_error, perturb

ROOT = Path(__file__).resolve().parents[1]
INPUT_SIZE = {"inception_v3": 299}

#: family: (torchvision module, keyword arguments to build a model, example input builder).
FAMILIES: dict[str, tuple[Any, Callable[[str], dict], Callable[[str], tuple]]] = {
    "classification": (torchvision.models, lambda name: {},
                       lambda name: (torch.randn(1, 3, INPUT_SIZE.get(name, 224), INPUT_SIZE.get(name, 224)),)),
    "segmentation": (torchvision.models.segmentation, lambda name: {"weights_backbone": None},
                     lambda name: (torch.randn(1, 3, 224, 224),)),
    "detection": (torchvision.models.detection,
                  lambda name: {"weights_backbone": None, ("box_score_thresh" if "rcnn" in name else "score_thresh"): 0.0},
                  lambda name: ([torch.rand(3, 224, 224)],)),
    "video": (torchvision.models.video, lambda name: {}, lambda name: (torch.randn(1, 3, 16, 224, 224),)),
    "optical_flow": (torchvision.models.optical_flow, lambda name: {},
                     lambda name: (torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128))),
}


def family_of(name: str) -> str:
    """The torchvision family whose module lists ``name``."""
    return next(family for family, (module, _, _) in FAMILIES.items()
                if name in torchvision.models.list_models(module=module))


def _layout(value: Any, first_dims: bool) -> Any:
    """The nesting and tensor shapes of an output (without first dims where they may vary)."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape) if first_dims else tuple(value.shape[1:])
    if isinstance(value, dict):
        return {k: _layout(v, first_dims) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_layout(v, first_dims) for v in value]
    return type(value).__name__


def half_of_every_group(snapshot, exact_only: bool = False) -> list:
    """The first half (by index, rounded up) of every prunable group, one label kept: what
    ``UniformLabelSelector(0.5)`` removes when all scores tie (ties leave by index), without calibrating; with
    ``exact_only`` skip LayerNorm'd labels."""
    analysis = snapshot.analysis
    chosen = []
    for group in analysis.groups:
        usable = group[~analysis.normalized[group]] if exact_only else group
        if len(usable) == len(group):
            usable = usable[: len(group) // 2]
        chosen += [snapshot.label(i) for i in usable[: min((len(group) + 1) // 2, len(group) - 1)].tolist()]
    return chosen


#: Below this share of parameters removed at 50% uniform, a table says why (``why_little``).
LITTLE = 1 / 3


def _short(op: str) -> str:
    """An op's name without its module path (``Tensor.view`` and ``model output`` stay as they are)."""
    return op if op.startswith("Tensor.") else op.rsplit(".", 1)[-1]


def why_little(snapshot, model: torch.nn.Module) -> str:
    """Why a model prunes little, from its analysis: the ops no rule understands, then the ops that fixed
    the most parameters (each parameter with a dim that never prunes counted for the op that first fixed
    that dim's channels) with the share of all parameters they hold."""
    analysis, named = snapshot.analysis, dict(model.named_parameters())
    total = sum(p.numel() for p in named.values())
    fixed: dict[str, str] = {}  # parameter -> the op that fixed one of its dims
    for site in analysis.sites:
        if site.name in named and site.name not in fixed and not analysis.prunable[site.label_index].any():
            causes = analysis.blocked_by[site.label_index]
            causes = causes[causes >= 0]
            fixed[site.name] = (_short(analysis.blockers[int(statistics.mode(causes.tolist()))]) if len(causes)
                                else "no rule")
    held: dict[str, int] = {}
    for name, op in fixed.items():
        held[op] = held.get(op, 0) + named[name].numel()
    opaque = sorted({_short(op.split(" (", 1)[1].rstrip(")")) for op in snapshot.opaque_ops})
    top = [(op, count) for op, count in sorted(held.items(), key=lambda item: -item[1])[:3] if count >= 0.01 * total]
    fixed_by = "fixed by " + ", ".join(f"{op} ({count / total:.0%})" for op, count in top) if top else \
        "no parameter with a fixed dim"
    return "; ".join(([f"opaque: {', '.join(opaque)}"] if opaque else []) + [fixed_by])


def prune_half_and_check(model: torch.nn.Module, x: torch.Tensor, row: dict, runs: Callable[[Any], bool]) -> None:
    """Into ``row``: IR build seconds, labels, groups and ops no rule understands; then prune the first half of
    every group, run the pruned model (``row["runs"] = runs(output)``), and record the parameters left and the
    equivalence error of the exact labels (float64; float32 where a kernel has no float64, as the grouped
    matmul of mixtures of experts, marked ``row["float32"]``)."""
    started = time.perf_counter()
    ir = PruningIR(model, example_input=x)
    row["build_s"] = time.perf_counter() - started
    snapshot = ir.snapshot()
    row["labels"], row["groups"] = len(snapshot.labels), len(snapshot.groups)
    row["opaque"] = sorted({op.split(" (", 1)[1].rstrip(")") for op in snapshot.opaque_ops})
    pruned = ir.prune(labels=half_of_every_group(snapshot)).model
    with torch.no_grad():
        row["runs"] = runs(pruned(x))
    row["params"] = sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in model.parameters())
    if 1 - row["params"] < LITTLE:
        row["why"] = why_little(snapshot, model)
    exact = half_of_every_group(snapshot, exact_only=True)
    row["equivalence_error"] = None
    if exact:
        try:
            row["equivalence_error"] = equivalence_error(ir, exact, x, dtype=torch.float64)
        except RuntimeError:
            row["equivalence_error"] = equivalence_error(ir, exact, x)
            row["float32"] = True


def run_isolated(module: str, name: str, timeout: float, *options: str) -> dict:
    """``python -m module --child name [options]`` in a fresh process (memory and any crash stay there): the JSON
    row it prints."""
    try:
        done = subprocess.run([sys.executable, "-m", module, "--child", name, *options], capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"model": name, "error": f"timeout after {timeout:.0f}s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"model": name, "error": f"crashed (exit {done.returncode}): {done.stderr.strip()[-200:]}"}
    return json.loads(lines[-1])


def run_all_isolated(module: str, names: list[str], jobs: int, timeout: float, json_path: Path | None,
                     *options: str) -> list[dict]:
    """``run_isolated`` for every name, ``jobs`` at a time: one line per row as it comes, the rows so far
    written to ``json_path`` after each (atomically)."""
    rows = []
    with ThreadPoolExecutor(jobs) as pool:
        for row in pool.map(lambda name: run_isolated(module, name, timeout, *options), names):
            rows.append(row)
            outcome = row.get("peer", row)  # a peer's row (hf_zoo --peer) carries its result under "peer"
            name = f"{row['model']} peer:" if "peer" in row else row["model"]
            print(name, row.get("skipped") or outcome.get("error") or
                  f"ok params {outcome['params']:.2f} opaque {row.get('opaque', '-')}", flush=True)
            if json_path:
                json_path.with_suffix(".tmp").write_text(json.dumps(rows, indent=1))
                json_path.with_suffix(".tmp").replace(json_path)
    return rows


def run_model(name: str, repeats: int) -> dict:
    torch.manual_seed(0)
    family = family_of(name)
    _, options, example = FAMILIES[family]
    model = perturb(torchvision.models.get_model(name, weights=None, **options(name)).eval(),
                    scale=0.005 if family == "detection" else 0.05)
    x = example(name)
    with torch.no_grad():
        model(*x)  # as users do before pruning (a model that caches in eval mode fills its cache)
    build, prune = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        ir = PruningIR(model, example_input=x)
        build.append(time.perf_counter() - started)
        snapshot = ir.snapshot()
        labels = half_of_every_group(snapshot)
        started = time.perf_counter()
        pruned = ir.prune(labels=labels)
        prune.append(time.perf_counter() - started)
    with torch.no_grad():
        out, reference = pruned.model(*x), model(*x)
    count = macs(x)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    row = {
        "model": name,
        "family": family,
        "labels": len(snapshot.labels),
        "groups": len(snapshot.groups),
        "unprunable": snapshot.num_labels - len(snapshot.labels),
        "build_s": statistics.median(build),
        "prune_s": statistics.median(prune),
        "params": params(pruned.model) / params(model),
        "why": why_little(snapshot, model) if 1 - params(pruned.model) / params(model) < LITTLE else "",
        "macs": count(pruned.model) / count(model),
        "runs": (tuple(out.shape) == (1, 1000) if family == "classification"
                 else _layout(out, family != "detection") == _layout(reference, family != "detection")),
        "boxes": sum(len(image["boxes"]) for image in reference) if family == "detection" else None,
        "opaque": sorted({op.split(" (", 1)[1].rstrip(")").rsplit(".", 1)[-1] for op in snapshot.opaque_ops}),
    }
    exact = half_of_every_group(snapshot, exact_only=True)
    row["equivalence"] = float("nan")
    if exact:
        try:
            row["equivalence"] = equivalence_error(ir, exact, *x, dtype=torch.float64)
        except RuntimeError:  # the model makes float32 tensors itself (RAFT's coordinate grids)
            row["equivalence"] = equivalence_error(ir, exact, *x)
            row["float32"] = True
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="*", default=["classification"], choices=sorted(FAMILIES))
    parser.add_argument("--models", nargs="*", help="default: every model of --families")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    args.models = args.models or [name for family in args.families
                                  for name in torchvision.models.list_models(module=FAMILIES[family][0])]
    warnings.filterwarnings("ignore")
    torch.set_grad_enabled(False)
    tasks = args.families != ["classification"]
    header = ("| model | labels | groups | unprunable | build s | prune s | params removed | MACs left | runs | "
              "equiv. err |" + (" family | ops no rule understands |" if tasks else "") + " why under 1/3 removed |")
    lines = [header, "|" + "---|" * (13 if tasks else 11)]
    print(header, flush=True)
    failures = 0
    for name in args.models:
        try:
            r = run_model(name, args.repeats)
            line = (f"| {name} | {r['labels']} | {r['groups']} | {r['unprunable']} | {r['build_s']:.2f} | "
                    f"{r['prune_s']:.2f} | {1 - r['params']:.2f} | {r['macs']:.2f} | "
                    f"{'no boxes' if r['boxes'] == 0 else 'ok' if r['runs'] else 'WRONG SHAPE'} | "
                    f"{r['equivalence']:.1e}{' (f32)' * r.get('float32', 0)} |"
                    + (f" {r['family']} | {', '.join(r['opaque'])} |" if tasks else "") + f" {r['why']} |")
            failures += not r["runs"] or r["boxes"] == 0 or not r["equivalence"] < (1e-3 if r.get("float32") else 1e-4)
        except Exception as error:  # noqa: BLE001 - a benchmark reports every failure and goes on
            line = f"| {name} | error: {type(error).__name__}: {str(error)[:120]} |"
            failures += 1
        lines.append(line)
        print(line, flush=True)
        gc.collect()
    print(f"\n{len(args.models) - failures}/{len(args.models)} models ok")
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + f"\n\n{len(args.models) - failures}/{len(args.models)} models ok\n")


if __name__ == "__main__":
    main()
