"""Regenerate BENCHMARKS.md and benchmarks/figures/*.png: coverage, tool speed, quality at equal cost and
realised latency, ours against Torch-Pruning 1.6.1, all on this machine.

    python -m benchmarks.run_all [--quick] [--reuse coverage speed quality quality_fashion hf_coverage] [--out BENCHMARKS.md]

Each part runs as its own module in a subprocess (``benchmarks.coverage_table``, ``benchmarks.speed`` with
``--calibration``, ``benchmarks.quality`` on digits and, as ``quality_fashion``, on Fashion-MNIST, and as
``hf_coverage`` ``benchmarks.hf_zoo --peer``), writing JSON under
``benchmarks/results/``; ``--reuse PART`` takes that
JSON from an earlier run instead of running the part again (BENCHMARKS.md then says so, with the date of
the file). ``--quick`` passes ``--quick`` to every part (minutes instead of hours) and writes to
``BENCHMARKS.quick.md``, ``benchmarks/results/quick/`` and ``benchmarks/figures/quick/`` instead. ``make bench`` runs this module without flags.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import coverage_table as coverage_part
from . import quality as quality_part
from . import speed as speed_part

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
FIGURES = BENCH / "figures"

PY = ".venv/bin/python"


def results_dir(quick: bool) -> Path:
    return RESULTS / "quick" if quick else RESULTS


def part_commands(quick: bool) -> dict[str, list[str]]:
    q = ["--quick"] if quick else []
    out = results_dir(quick).relative_to(ROOT)
    return {
        "coverage": ["-m", "benchmarks.coverage_table", *q, "--timeout", "120" if quick else "600", "--jobs", "2", "--json", f"{out}/coverage.json"],
        "speed": ["-m", "benchmarks.speed", *q, "--repeats", "7", "--calibration", "--json", f"{out}/speed.json"],
        "quality": ["-m", "benchmarks.quality", *q, "--jobs", "2", "--finetune-epochs", "5", "--seeds", "10", "--json", f"{out}/quality.json"],
        "quality_fashion": ["-m", "benchmarks.quality", *q, "--data", "fashion_mnist", "--jobs", "2", "--baseline-epochs",
                            "2" if quick else "10", "--finetune-epochs", "1", "--short-epochs", "0", "--seeds", "2",
                            "--json", f"{out}/quality_fashion.json"],
        "hf_coverage": ["-m", "benchmarks.hf_zoo", "--peer", *(["--models", "llama", "bert", "vit", "gpt2", "opt"] if quick else []),
                        "--jobs", "2", "--json", f"{out}/hf_coverage.json", "--markdown",
                        f"{'benchmarks/results/quick' if quick else 'benchmarks'}/hf_zoo.md"],
    }
PARTS = ("coverage", "speed", "quality", "quality_fashion", "hf_coverage")


def unavailable(name: str) -> str | None:
    """Why part ``name`` cannot run on this machine (its data is not installed), or None."""
    if name == "hf_coverage":
        import importlib.util

        if importlib.util.find_spec("transformers") is None:
            return "transformers is not installed: `.venv/bin/pip install -r requirements-dev.txt`, then rerun"
    if name == "quality_fashion":
        from stages.data import FASHION_MNIST_ROOT, is_idx_dir

        if not is_idx_dir(FASHION_MNIST_ROOT):
            return (f"Fashion-MNIST is not installed ({FASHION_MNIST_ROOT}): `apt-get install dataset-fashion-mnist` "
                    "(Debian/Ubuntu), then rerun")
    return None


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        memory = float("nan")
    from importlib.metadata import version

    import torch
    import torchvision

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory, "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "torch_pruning": version("torch-pruning")}


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# ---------------------------------------------------------------- figures


def figures(quality_rows: list[dict], speed_rows: list[dict], folder: Path = FIGURES) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    rows = [r for r in quality_rows if "error" not in r]
    models = list(dict.fromkeys(r["model"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "baseline"))
    palette = plt.cm.tab10 if len(methods) <= 10 else plt.cm.tab20
    colors = {m: palette(i) for i, m in enumerate(methods)}
    markers = {0.3: "v", 0.5: "o", 0.7: "^"}
    if rows:
        fig, axes = plt.subplots(2, len(models), figsize=(max(12, 6.5 * len(models)), 9), squeeze=False)
        for col, model in enumerate(models):
            base = next(r for r in rows if r["model"] == model and r["method"] == "baseline")
            for row_i, key, title in ((0, "acc_finetuned", "after fine-tuning"), (1, "acc_pruned", "right after pruning")):
                ax = axes[row_i][col]
                for r in rows:
                    if r["model"] != model or r["method"] == "baseline":
                        continue
                    ours = r.get("tool") == "ours"
                    ax.scatter(r["latency_b1_ms"], r[key], s=60, marker=markers.get(r["target"], "o"),
                               facecolors=colors[r["method"]] if ours else "none", edgecolors=colors[r["method"]],
                               linewidths=1.8)
                ax.axvline(base["latency_b1_ms"], color="grey", ls=":", lw=1)
                ax.axhline(base[key], color="grey", ls=":", lw=1)
                ax.set_title(f"{model}: accuracy {title}")
                ax.set_xlabel("measured CPU latency, batch 1 (ms)")
                ax.set_ylabel("test accuracy")
                ax.grid(alpha=0.3)
        handles = [plt.Line2D([], [], ls="", marker="s", markersize=9,
                              markerfacecolor=colors[m] if m.startswith("ours") else "none",
                              markeredgecolor=colors[m], label=m) for m in methods]
        handles += [plt.Line2D([], [], ls="", marker=mk, color="k", markerfacecolor="none", label=f"{t:.0%} MACs target")
                    for t, mk in markers.items()]
        fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False)
        fig.suptitle("Accuracy vs measured latency (filled: ours, hollow: Torch-Pruning; dotted: unpruned)")
        fig.tight_layout(rect=(0, 0.11, 1, 0.96))
        path = folder / "accuracy_vs_latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

        shapes = dict(zip(models, "oD^vP<>p"))  # squares mark methods in the legend
        fig, axes = plt.subplots(1, 2, figsize=(12, 6))
        for ax, b in zip(axes, (1, 64)):
            for r in rows:
                if r["method"] == "baseline":
                    continue
                ours = r.get("tool") == "ours"
                ax.scatter(r["macs_ratio"], r[f"latency_ratio_b{b}"], s=50, marker=shapes[r["model"]],
                           facecolors=colors[r["method"]] if ours else "none", edgecolors=colors[r["method"]])
            ax.plot([0, 1.05], [0, 1.05], color="grey", ls="--", lw=1, label="latency ratio = MACs ratio")
            ax.set_xlim(0, 1.05)
            ax.set_ylim(0, max(1.3, max(r[f"latency_ratio_b{b}"] for r in rows) * 1.05))
            ax.set_xlabel("MACs ratio (pruned / unpruned)")
            ax.set_ylabel("measured latency ratio")
            ax.set_title(f"batch {b}")
            ax.grid(alpha=0.3)
        fig.legend(handles=handles[: len(methods)] + [
            plt.Line2D([], [], ls="", marker=shapes[m], color="k", markerfacecolor="none", label=m) for m in models],
            loc="lower center", ncol=4, frameon=False)
        fig.tight_layout(rect=(0, 0.2, 1, 1))
        path = folder / "latency_vs_macs.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if speed_rows:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        names = [r["model"] for r in speed_rows]
        xs = range(len(names))
        w = 0.38
        ax.bar([x - w / 2 for x in xs], [r["ours_build_wall"] for r in speed_rows], w, color="tab:blue", label="ours: IR build")
        ax.bar([x - w / 2 for x in xs], [r["ours_prune_wall"] for r in speed_rows], w, color="lightsteelblue",
               bottom=[r["ours_build_wall"] for r in speed_rows], label="ours: select + prune (a pruned copy)")
        ax.bar([x + w / 2 for x in xs], [r["peer_copy_wall"] for r in speed_rows], w, color="wheat",
               label="TP: deepcopy (to keep the original)")
        ax.bar([x + w / 2 for x in xs], [r["peer_build_wall"] for r in speed_rows], w, color="tab:orange",
               bottom=[r["peer_copy_wall"] for r in speed_rows], label="TP: DependencyGraph build")
        ax.bar([x + w / 2 for x in xs], [r["peer_prune_wall"] for r in speed_rows], w, color="navajowhite",
               bottom=[r["peer_copy_wall"] + r["peer_build_wall"] for r in speed_rows], label="TP: pruning step (in place)")
        ax.set_xticks(list(xs), names)
        ax.set_ylabel("seconds (median, wall clock)")
        ax.set_title("Tool speed at 50% uniform pruning, one thread (both leave the original model intact)")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = folder / "tool_speed.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return [str(p.relative_to(ROOT)) for p in written]


# ---------------------------------------------------------------- markdown


def coverage_section(rows: list[dict]) -> tuple[str, list[str]]:
    losses = []
    only_peer = [r["model"] for r in rows if not r["ours"]["ok"] and r["peer"]["ok"]]
    only_ours = [r["model"] for r in rows if r["ours"]["ok"] and not r["peer"]["ok"]]
    both = [r["model"] for r in rows if not r["ours"]["ok"] and not r["peer"]["ok"]]
    for r in rows:
        if not r["ours"]["ok"]:
            losses.append(f"coverage: **{r['model']}** fails with us: `{r['ours']['error']}`"
                          + (" (Torch-Pruning: ok)" if r["peer"]["ok"] else " (Torch-Pruning fails too)"))
    text = [coverage_part.markdown(rows), "",
            f"- only we prune: {', '.join(only_ours) or 'none'}",
            f"- only Torch-Pruning prunes: {', '.join(only_peer) or 'none'}",
            f"- neither: {', '.join(both) or 'none'}"]
    return "\n".join(text), losses


def hf_coverage_section(rows: list[dict]) -> tuple[str, str, list[str]]:
    """The headline, the section text and the losses of the Hugging Face zoo run with ``--peer``."""
    built = [r for r in rows if "skipped" not in r]
    ours = [r for r in built if r.get("runs") and "error" not in r]
    peer = [r for r in built if "error" not in r.get("peer", {"error": ""})]
    losses = [f"coverage (Hugging Face): **{r['model']}** fails with us: `{r.get('error', 'no output class')[:160]}`"
              + (" (Torch-Pruning: ok)" if r in peer else " (Torch-Pruning fails too)") for r in built if r not in ours]
    headline = (f"- **Coverage, Hugging Face** (every `transformers` model type with a causal-LM, image- or "
                f"sequence-classification head, built tiny; half of every group, logits kept): ours "
                f"**{len(ours)}/{len(built)}**, Torch-Pruning **{len(peer)}/{len(built)}** built models prune, run and "
                "return their own output class.")
    both = [r for r in ours if r in peer]
    text = "\n".join([
        "`benchmarks/hf_zoo.py --peer` builds each model type's head class from its default config shrunk to a tiny "
        "model (random weights), prunes it with us (the first half of every group) and, in a process of its own, "
        "with Torch-Pruning through `benchmarks/peer.py`'s adapter (magnitude, 50% of every layer, the layers that "
        "output the logits kept, 30 seconds per model), and checks that the pruned model runs and returns its own "
        f"output class. {len(rows) - len(built)} types whose config does not build shrunk, or whose shrunk model "
        "does not run, are skipped. The full table, with our equivalence errors and opaque ops: "
        "[benchmarks/hf_zoo.md](benchmarks/hf_zoo.md).", "",
        f"- ours: {len(ours)}/{len(built)}; Torch-Pruning: {len(peer)}/{len(built)} "
        f"({sum(r['peer']['error'].startswith('timeout') for r in built if r not in peer)} time-outs)",
        f"- only Torch-Pruning prunes: {', '.join(r['model'] for r in peer if r not in ours) or 'none'}",
        f"- median parameters left where both prune ({len(both)}): ours "
        f"{statistics.median(r['params'] for r in both):.2f}, Torch-Pruning "
        f"{statistics.median(r['peer']['params'] for r in both):.2f}" if both else "- no model that both prune"])
    return headline, text, losses


def speed_section(result: dict) -> tuple[str, list[str]]:
    rows = result["rows"]
    losses = []
    for r in rows:
        for key, what in (("ratio", "pruned copies"), ("ratio_inplace", "pruning in place"), ("ratio_mixed", "our copy vs its in-place pruning")):
            if r[f"{key}_wall"] > 0.5:
                losses.append(f"speed ({what}): **{r['model']}** ours/peer = {r[f'{key}_wall']:.2f} (wall), "
                              f"{r[f'{key}_cpu']:.2f} (CPU time): " + ("slower than Torch-Pruning" if r[f"{key}_wall"] > 1
                                                                      else "faster, but misses the 'at most half' target"))
    text = [speed_part.markdown(rows)]
    if rows:
        text += ["", f"Median ratio over the {len(rows)} models, wall (CPU time): pruned copies "
                 f"**{statistics.median(r['ratio_wall'] for r in rows):.2f}** ({statistics.median(r['ratio_cpu'] for r in rows):.2f}), "
                 f"in place **{statistics.median(r['ratio_inplace_wall'] for r in rows):.2f}** "
                 f"({statistics.median(r['ratio_inplace_cpu'] for r in rows):.2f}); our copy against its in-place "
                 f"pruning {statistics.median(r['ratio_mixed_wall'] for r in rows):.2f}. Target: at most 0.5."]
    if "calibration" in result:
        text += ["", "**Calibration overhead** (`LossAwareCriterion` step vs plain forward+backward, "
                 "from `benchmarks/criterion_overhead.py`, run as:", f"`{result['calibration_command']}`):", "",
                 "```", result["calibration"], "```"]
    return "\n".join(text), losses


def _leaders(rows: list[dict], key: str) -> dict[tuple, tuple[dict, dict]]:
    """(model, target) -> (our best row, the peer's best row) by ``key``, among the rows compared on it, at every
    point where both tools have one."""
    out = {}
    for point in dict.fromkeys((r["model"], r["target"]) for r in rows if r["method"] != "baseline"):
        group = [r for r in rows if (r["model"], r["target"]) == point and quality_part.compared(r, key)]
        ours = [r for r in group if r.get("tool") == "ours"]
        peer = [r for r in group if r.get("tool") == "peer"]
        if ours and peer:
            out[point] = (max(ours, key=lambda r: r[key]), max(peer, key=lambda r: r[key]))
    return out


def quality_losses(rows: list[dict]) -> list[str]:
    compared = quality_part.compared
    losses = []
    keys = dict.fromkeys((r["model"], r["target"]) for r in rows if r["method"] != "baseline")
    leaders = {key: _leaders(rows, key) for key, _, _ in quality_part.COMPARED}
    for model, target in keys:
        for key, what, _ in quality_part.COMPARED:
            if (model, target) not in leaders[key]:
                continue
            best_ours, best_peer = leaders[key][model, target]
            if best_ours[key] < best_peer[key]:
                losses.append(f"quality: **{model} at {target:.0%} MACs, {what}**: our best {best_ours[key]:.3f} "
                              f"({best_ours['method']}) < {best_peer[key]:.3f} ({best_peer['method']})"
                              + _significance(rows, best_ours, best_peer, key))
    methods = list(dict.fromkeys(r["method"] for r in rows if r.get("tool") == "ours"))
    for method in methods:
        for key, what, _ in quality_part.COMPARED:
            below = []
            for model, target in keys:
                group = [r for r in rows if (r["model"], r["target"]) == (model, target)]
                mine = [r for r in group if r["method"] == method and compared(r, key)]
                peer = [r[key] for r in group if r.get("tool") == "peer" and compared(r, key)]
                if mine and peer and mine[0][key] < max(peer):
                    below.append(f"{model} {target:.0%}")
            if below:
                losses.append(f"quality: {method} is below Torch-Pruning's best {what} at {len(below)}/{len(keys)} "
                              f"points ({', '.join(below)})")
    for r in rows:
        if r.get("tool") == "ours" and "error" in r:
            losses.append(f"quality: {r['model']} {r['target']:.0%} {r['method']} failed: `{r['error']}`")
    return losses


def _significance(rows: list[dict], ours: dict, peer: dict, key: str) -> str:
    """How large a gap in accuracy is: in test images, whether the seeds' ranges overlap, and in standard
    errors of the difference of the two means (seed SD pooled over the model's rows), with whether that is
    within the seed noise (below ``quality.MEASURABLE`` standard errors)."""
    parts = []
    if "test_images" in ours:
        parts.append(f"mean gap {(peer[key] - ours[key]) * ours['test_images']:.1f} of {ours['test_images']} test images")
    seeds = f"{key}_seeds"
    n, m = len(ours.get(seeds, [])), len(peer.get(seeds, []))
    if n > 1 and m > 1:
        overlap = max(ours[seeds]) >= min(peer[seeds])
        parts.append(f"{n} seeds each, ranges {min(ours[seeds]):.3f}-{max(ours[seeds]):.3f} vs "
                     f"{min(peer[seeds]):.3f}-{max(peer[seeds]):.3f}" + (" overlap" if overlap else " do not overlap"))
    errors = quality_part.gap_in_errors(rows, ours, peer, key)
    if errors is not None:
        parts.append(f"{errors:.1f} standard errors (seed SD {quality_part.pooled_seed_sd(rows, ours['model'], key):.4f} "
                     "pooled over the model's rows): "
                     + ("measurable" if errors >= quality_part.MEASURABLE else "within the seed noise"))
    return f" ({'; '.join(parts)})" if parts else ""


FASHION_TEXT = (
    "The same benchmark (``quality.py --data fashion_mnist``) on a task that fine-tuning does not saturate: "
    "Fashion-MNIST (70,000 clothing images in 10 classes, from Debian's ``dataset-fashion-mnist`` package), "
    "shrunk to 14x14 by 2x2 averaging so that the whole table fits a 2-core machine, split by the ``prepare`` "
    "stage (seed 0, 70/15/15: 10,500 test images, so one image is 0.0001 of accuracy). Both models (the "
    "pipeline's DigitsResNet factory, width 32 and 64) are trained here with the pipeline's loop and settings "
    "for ``--baseline-epochs`` epochs and cached under ``benchmarks/.cache/``; calibration, selection, the "
    "peer's methods, BatchNorm re-estimation and the fine-tuning loop are the digits table's. With ~49,000 "
    "training images an epoch is ~770 optimizer steps, so the budget below is short by design.")


def quality_section_note(rows: list[dict]) -> str:
    """The sentence under a quality table: what bold and verdict mean, the test size and the budget."""
    sizes = sorted({r["test_images"] for r in rows if "test_images" in r})
    size = "/".join(f"{n:,}" for n in sizes) or "?"
    unit = f"{1 / sizes[0]:.4f}" if sizes else "?"
    return ("Bold: best accuracy at that (model, target) among all methods (ties: all bold). 'verdict' compares "
            "each of our rows with the best Torch-Pruning row at the same target; right after pruning only one-shot "
            "rows are compared (the peer's iterative rows carry the BatchNorm re-estimations between their steps, "
            "ours apply their labels to the unpruned model). For the fine-tuned accuracies the verdict also gives the "
            "gap to that row in standard errors (SE) of the difference of the two seed means, with the seed-to-seed SD "
            f"pooled over the model's rows; under {quality_part.MEASURABLE:g} SE the gap is within the noise of "
            "fine-tuning itself (the best of several methods' means is also biased upward by that noise). "
            f"The test split has {size} images, "
            f"so one image is {unit} of accuracy. Fine-tuning budget in this run: {finetune_budget(rows)} for every "
            "method.")


def quality_headline(rows: list[dict], data: str) -> str:
    """At how many (model, budget) points our best method matches or beats the peer's best, per compared accuracy,
    and for the fine-tuned accuracies at how many the peer's best is ahead by a measurable gap."""
    keys = list(dict.fromkeys((r["model"], r["target"]) for r in rows if r["method"] != "baseline"))
    counts, measured = [], []
    for key, what, _ in quality_part.COMPARED:
        if not any(key in r for r in rows if r["method"] != "baseline"):
            continue
        leaders = _leaders(rows, key).values()
        won = sum(ours[key] >= peer[key] for ours, peer in leaders)
        counts.append(f"**{won}/{len(keys)}** {what}")
        gaps = [quality_part.gap_in_errors(rows, ours, peer, key) for ours, peer in leaders]
        if key in quality_part.SEEDED and all(g is not None for g in gaps):
            behind = sum(g >= quality_part.MEASURABLE for g in gaps)
            ahead = sum(g <= -quality_part.MEASURABLE for g in gaps)
            measured.append(f"{what} **{behind}/{len(keys)}** measurably behind, {ahead}/{len(keys)} measurably ahead")
    line = (f"- **Quality at equal MACs, {data}**: our best method matches or beats Torch-Pruning's best at "
            f"{', '.join(counts)} of the (model, budget) points (test accuracy; see the tables for which of our "
            "selectors).")
    if measured:
        line += (f" Counting only gaps of at least {quality_part.MEASURABLE:g} standard errors of the difference of "
                 f"the seed means (seed SD pooled over the model's rows) as measured: {'; '.join(measured)}.")
    return line


def finetune_budget(rows: list[dict]) -> str:
    epochs = sorted({r["finetune_epochs"] for r in rows if "finetune_epochs" in r})
    seeds = sorted({len(r["acc_finetuned_seeds"]) for r in rows if "acc_finetuned_seeds" in r})
    runs = f", {'/'.join(map(str, seeds))} seed(s), accuracies are means over seeds" if seeds else ""
    short = sorted({r["short_epochs"] for r in rows if r.get("short_epochs")})
    also = f"; short budget: BatchNorm re-estimation + {'/'.join(map(str, short))} epoch(s), same seeds" if short else ""
    return "BatchNorm re-estimation + " + "/".join(map(str, epochs)) + " epoch(s)" + runs + also


def latency_section(rows: list[dict]) -> str:
    lines = ["| model | target | method | MACs ratio | latency ratio b1 | latency ratio b64 | b1 ratio / MACs ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "baseline" or "error" in r:
            continue
        lines.append(f"| {r['model']} | {r['target']:.0%} | {r['method']} | {r['macs_ratio']:.3f} | "
                     f"{r['latency_ratio_b1']:.2f} | {r['latency_ratio_b64']:.2f} | {r['latency_ratio_b1'] / r['macs_ratio']:.2f} |")
    by_tool = {}
    for r in rows:
        if r.get("tool") and "error" not in r:
            by_tool.setdefault(r["tool"], []).append(r)
    summary = []
    for tool, rs in by_tool.items():
        summary.append(f"{'ours' if tool == 'ours' else 'Torch-Pruning'}: median latency ratio / MACs ratio "
                       f"{statistics.median(r['latency_ratio_b1'] / r['macs_ratio'] for r in rs):.2f} at batch 1, "
                       f"{statistics.median(r['latency_ratio_b64'] / r['macs_ratio'] for r in rs):.2f} at batch 64")
    for r in rows:
        if r["method"] == "baseline" and "latency_traced_b1_ms" in r:
            summary.append(f"{r['model']} unpruned, traced into a torch.fx GraphModule (the form of our pruned models): "
                           f"latency {r['latency_traced_b1_ms'] / r['latency_b1_ms']:.3f}x the original module's at batch 1, "
                           f"{r['latency_traced_b64_ms'] / r['latency_b64_ms']:.3f}x at batch 64 (fx's generated "
                           "forward, not pruning)")
    return "\n".join(lines + [""] + [f"- {s}" for s in summary])


def write_markdown(out: Path, info: dict, results: dict, figs: list[str], commands: dict, reused: dict,
                   wall: float, quick: bool) -> None:
    m = info["machine"]
    losses = []
    cov_text = speed_text = None
    if "coverage" in results:
        cov_text, more = coverage_section(results["coverage"])
        losses += more
    if "speed" in results:
        speed_text, more = speed_section(results["speed"])
        losses += more
    if "hf_coverage" in results:
        hf_headline, hf_text, more = hf_coverage_section(results["hf_coverage"])
        losses += more
    quality_rows = results.get("quality", []) + results.get("quality_fashion", [])
    for name in ("quality", "quality_fashion"):
        if name in results:
            losses += quality_losses(results[name])
    if quality_rows:
        rs = [r for r in quality_rows if r.get("tool") and "error" not in r]
        for b in (1, 64):
            per = {t: statistics.median(r[f"latency_ratio_b{b}"] / r["macs_ratio"] for r in rs if r["tool"] == t)
                   for t in ("ours", "peer")}
            if per["ours"] > per["peer"]:
                losses.append(f"latency: at equal MACs our pruned models realise less speed-up at batch {b}: median "
                              f"latency ratio / MACs ratio {per['ours']:.2f} (ours) vs {per['peer']:.2f} (Torch-Pruning)")

    head = [
        "# Benchmarks: ours vs Torch-Pruning 1.6.1" + (" (quick run)" if quick else ""), "",
        (f"Generated {info['date']} by `{PY} -m benchmarks.run_all` in {wall / 60:.0f} min." if not reused else
         f"Written {info['date']} by `{info['argv']}` from the parts' JSON results (their dates are under Commands; "
         "parts not reused ran in this invocation)."), "",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']:.0f} GiB RAM, {m['os']}; shared with other "
        f"jobs (load average (1/5/15 min) when this run started {info['load_start']}, when it ended {info['load_end']}), "
        "so every timing interleaves the two tools and reports medians and ratios",
        f"- software: Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, torch-pruning "
        f"{m['torch_pruning']}; CPU only, one torch thread per process",
        "", "## Commands", "", "```bash", "make bench    # = .venv/bin/pip install -e '.[bench]' && .venv/bin/python -m benchmarks.run_all",
    ]
    for name, cmd in commands.items():
        note = f"   # reused from {reused[name]}" if name in reused else ""
        note = f"   # not run: {info['not_run'][name]}" if name in info.get("not_run", {}) else note
        head.append(f"{PY} {' '.join(cmd)}{note}")
    if reused:
        head.append(f"{info['argv']}   # wrote this file")
    head += ["```", ""]

    summary = ["## Headlines", ""]
    if "coverage" in results:
        rows = results["coverage"]
        summary.append(f"- **Coverage** (torchvision zoo, 50% uniform, classifier kept): ours "
                       f"**{sum(r['ours']['ok'] for r in rows)}/{len(rows)}**, Torch-Pruning "
                       f"**{sum(r['peer']['ok'] for r in rows)}/{len(rows)}** models prune and run.")
    if "hf_coverage" in results:
        summary.append(hf_headline)
    if "speed" in results and results["speed"]["rows"]:
        rows = results["speed"]["rows"]
        summary.append(f"- **Tool speed** (build + prune, ours/peer wall time, median over models): pruned copies "
                       f"**{statistics.median(r['ratio_wall'] for r in rows):.2f}x**, in place "
                       f"**{statistics.median(r['ratio_inplace_wall'] for r in rows):.2f}x**; per model (copies / in place): "
                       + ", ".join(f"{r['model']} {r['ratio_wall']:.2f} / {r['ratio_inplace_wall']:.2f}" for r in rows)
                       + " (target <= 0.5).")
    for name, data in (("quality", "digits"), ("quality_fashion", "Fashion-MNIST")):
        if name in results:
            summary.append(quality_headline(results[name], data))
    if quality_rows:
        summary.append("- **Latency realised**: " + latency_section(quality_rows).rsplit("\n\n", 1)[-1]
                       .replace("\n- ", "; ").lstrip("- ") + ".")
    summary += ["", "### Where we lose", ""] + ([f"- {line}" for line in losses] or ["- nowhere in this run"]) + [""]

    body = []
    if cov_text:
        body += ["## 1. Coverage", "", coverage_part.__doc__.split("\n\n", 2)[2].strip(), "", cov_text, ""]
    if "hf_coverage" in results:
        body += ["## 1b. Coverage of Hugging Face models", "", hf_text, ""]
    if speed_text:
        body += ["## 2. Tool speed", "", speed_part.__doc__.split("\n\n", 2)[2].strip(), "", speed_text, ""]
    if "quality" in results:
        body += ["## 3. Quality at equal cost", "", quality_part.__doc__.split("\n\n", 2)[2].strip(), "",
                 quality_section_note(results["quality"]) + " Differences of one or two images after fine-tuning "
                 "are noise, not a ranking (the pipeline's `finetune` stage uses params.yaml's `finetune.epochs`; set "
                 "with `--finetune-epochs`).", "",
                 quality_part.markdown(results["quality"]), ""]
    if "quality_fashion" in results or "quality_fashion" in info.get("not_run", {}):
        body += ["## 3b. Quality on Fashion-MNIST", "", FASHION_TEXT, ""]
        body += ([quality_section_note(results["quality_fashion"]), "", quality_part.markdown(results["quality_fashion"]), ""]
                 if "quality_fashion" in results else [f"Not run: {info['not_run']['quality_fashion']}.", ""])
    if quality_rows:
        body += ["## 4. Latency realised", "",
                 "Measured CPU latency ratio (pruned / unpruned, same model) against MACs ratio, per pruned model. "
                 "Our pruned models are `torch.fx.GraphModule`s, the peer's are the original module classes. "
                 "Batch-1 latency is measured with params.yaml's `latency.warmup`/`latency.repeats`; batch 64 with a "
                 "fifth of them, and on a loaded 2-core machine its ratios scatter widely between models of equal "
                 "MACs: read the batch-64 column as indicative only.", "",
                 latency_section(quality_rows), ""]
    body += ["## Caveats", "",
             "- Coverage checks that the pruned model runs with output (1, 1000), nothing more; our numerical "
             "equivalence on the zoo is `benchmarks/zoo.py`'s job. The parameter ratios differ on some models "
             "(googlenet, regnet, inception_v3, ViTs) because '50%' means different things: we remove half of every "
             "prunable group; Torch-Pruning applies its ratio per layer with its own grouping, and on "
             "torchvision ViTs with `num_heads` given it keeps far more parameters (0.67 vs 0.25).",
             "- A peer cell 'killed by signal 9' is a subprocess killed by the kernel (most likely out of memory on "
             "this 24 GiB machine shared with other jobs; not verified further); a timeout is a subprocess still "
             "running after the limit.",
             "- Tool speed: our 'prune' column includes choosing the labels (by index, no scoring); the peer's step "
             "includes its magnitude importance. Neither includes calibration.",
             "- Quality: the digits test split is small and both models are near 100% after fine-tuning, so the "
             "'after fine-tuning' ranking is mostly one or two images; 'right after pruning' separates the criteria "
             "far more. Fashion-MNIST (section 3b) has 39x more test images and ends near 92%, yet one epoch of "
             "fine-tuning still brings every method to within about 0.3 points of the others. Selection, bisection "
             "and cost counting (`pruning.latency.macs`) are the same code path for every method; only the "
             "importance and the grouping differ.", ""]
    if figs:
        body += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figs] + [""]
    out.write_text("\n".join(head + summary + body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every part")
    parser.add_argument("--reuse", nargs="*", default=[], choices=PARTS,
                        help="use benchmarks/results/PART.json from an earlier run instead of running PART")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="leave PART out")
    parser.add_argument("--out", type=Path, help="default: BENCHMARKS.md (BENCHMARKS.quick.md with --quick)")
    args = parser.parse_args()
    out = (args.out or ROOT / ("BENCHMARKS.quick.md" if args.quick else "BENCHMARKS.md")).resolve()
    started = time.perf_counter()
    info = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "argv": " ".join([PY, "-m", "benchmarks.run_all", *sys.argv[1:]]),
            "load_start": load_average()}
    commands = {k: v for k, v in part_commands(args.quick).items() if k not in args.skip}
    results, reused = {}, {}
    results_dir(args.quick).mkdir(parents=True, exist_ok=True)
    for name, cmd in commands.items():
        path = results_dir(args.quick) / f"{name}.json"
        if name in args.reuse:
            if not path.exists():
                raise SystemExit(f"--reuse {name}: {path} does not exist")
            reused[name] = f"{path.relative_to(ROOT)} ({dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc):%Y-%m-%d %H:%M UTC})"
        elif reason := unavailable(name):
            info.setdefault("not_run", {})[name] = reason
            print(f"== {name}: not run: {reason}", flush=True)
            continue
        else:
            print(f"== {name}: {PY} {' '.join(cmd)}", flush=True)
            subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True)
        results[name] = json.loads(path.read_text())
    info["load_end"] = load_average()
    figs = figures(results.get("quality", []) + results.get("quality_fashion", []), results.get("speed", {}).get("rows", []),
                   FIGURES / "quick" if args.quick else FIGURES)
    write_markdown(out, info, results, figs, commands, reused, time.perf_counter() - started, args.quick)
    print(f"wrote {out} and {', '.join(figs)}")


if __name__ == "__main__":
    main()
