"""How much the choice of layer widths matters after fine-tuning: every method against random allocations.

    python -m benchmarks.random_allocations [--data fashion_mnist] [--model default] [--target 0.3]
                                            [--samples 12] [--seeds 2] [--finetune-epochs 1]
                                            [--json F] [--markdown F]

The quality benchmark (``benchmarks/quality.py``) compares our selectors with Torch-Pruning's at equal MACs;
after fine-tuning their accuracies differ by less than the seed noise. This benchmark asks whether any
selector *could* do measurably better there. At one (model, target) it prunes, beside every method of the
quality benchmark (the same calibration, selection, pruning and fine-tuning), ``--samples`` random
allocations: each group's pruning ratio is a common factor times a random weight drawn uniformly from
[0.3, 1.7] (numpy seed ``--allocation-seed``), the factor bisected so that the pruned MACs just meet the
target; within a group the channels with the smallest weight norms go (``MagnitudeCriterion``), with no
compensation. With every group's weight 1 that is Torch-Pruning's magnitude uniform pruning (on Fashion-MNIST's
default model at 30%: the same channels, and bit-identical fine-tuned accuracies), so the random rows vary its
allocation and nothing else. Every row then gets the same fine-tuning budget
(``quality.finetune``: BatchNorm re-estimation and ``--finetune-epochs`` epochs, ``--seeds`` seeds).

The table lists the rows by fine-tuned accuracy with their convolutions' widths; the summary gives the
random rows' range, the pooled seed-to-seed SD, and where the best of each tool ranks.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch.nn as nn

from pruning import PruningIR, latency
from pruning.selectors.base import removal_order, round_half_up, snapshot_scores
from stages.calibrate import score
from stages.data import load_split, make_loader
from stages.errors import StageError
from stages.select import _smallest_meeting_target
from stages.training import setup

from . import quality

WEIGHTS = (0.3, 1.7)  # range of the random per-group weights of the pruning ratio
MOST = 0.97  # no group loses more than this fraction (and always keeps one label)


def random_labels(ir: PruningIR, weights: np.ndarray, cost, budget: float) -> list:
    """Labels removing ``factor * weights[g]`` of each group (smallest scores first), ``factor`` the smallest
    whose pruned cost meets ``budget``."""
    snapshot = ir.snapshot("main")
    scores = snapshot_scores(snapshot)

    def choose(factor: float) -> list:
        labels = []
        for group, weight in zip(snapshot.groups, weights):
            count = min(round_half_up(min(factor * weight, MOST) * len(group)), len(group) - 1)
            labels.extend(removal_order(group, scores)[:count])
        return sorted(labels, key=lambda label: label.index)

    return _smallest_meeting_target(ir, choose, 0.0, MOST / min(weights), False, cost, budget)


def conv_widths(model: nn.Module) -> list[int]:
    """Output channels of every convolution, in module order: the allocation, comparable between the tools."""
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def run(args: argparse.Namespace, log=print) -> list[dict]:
    warnings.filterwarnings("ignore")
    params = quality.load_params({"finetune.epochs": args.finetune_epochs} if args.finetune_epochs else {})
    _, device = setup(params)
    data_dir = quality.prepared_data(args.data, args.image_size, params)
    test_loader = make_loader(load_split(data_dir, "test"), 256, shuffle=False, seed=0)
    label = quality.model_label(args.data, args.model)
    rows = [r for r in quality.prune_all(args.model, [args.target], params, data_dir, device, log=log,
                                         baseline_epochs=args.baseline_epochs, label=label)
            if r["method"] != "baseline"]
    model = quality.baseline(args.model, params, data_dir, device, args.baseline_epochs)
    example = load_split(data_dir, "val").tensors[0][:1]
    cost = latency.macs(example)
    base_macs = cost(model)
    ir = PruningIR(copy.deepcopy(model), example_input=example)
    score(ir, quality.calibration_batches(params, data_dir), device, "eval", criterion="magnitude")
    groups = ir.snapshot("main").groups
    rng = np.random.default_rng(args.allocation_seed)
    for sample in range(args.samples):
        weights = rng.uniform(*WEIGHTS, len(groups))
        row = {"model": label, "method": f"random {sample + 1}", "tool": "random", "target": args.target,
               "weights": [round(float(w), 3) for w in weights]}
        started = time.perf_counter()
        try:
            labels = random_labels(ir, weights, cost, args.target * base_macs)
        except StageError:  # even MOST of every group costs too much: the table reports it
            row["error"] = f"no allocation with these weights meets {args.target:.0%} of the MACs"
        else:
            row["pruned_model"] = ir.prune(labels=labels, compensate=False).model
        row["select_s"] = time.perf_counter() - started
        rows.append(row)
    for row in rows:
        if "pruned_model" not in row:
            continue
        pruned = row.pop("pruned_model")
        row["macs_ratio"] = cost(pruned) / base_macs
        row["widths"] = conv_widths(pruned)
        row["test_images"] = len(test_loader.dataset)
        row.update(quality.finetune(pruned, params, data_dir, device, test_loader, seeds=args.seeds, short_epochs=0))
        log(f"  {row['method']}: MACs {row['macs_ratio']:.3f}, BN {row['acc_bn']:.4f}, "
            f"fine-tuned {row['acc_finetuned']:.4f}")
    for row in rows:
        row.pop("pruned_model", None)
    return rows


def fine_tuned(rows: list[dict]) -> list[dict]:
    """The rows that were fine-tuned, best first."""
    return sorted((r for r in rows if "acc_finetuned" in r), key=lambda r: -r["acc_finetuned"])


def summary(rows: list[dict]) -> list[str]:
    """Random rows' range, the pooled seed SD and the rank of each tool's best fine-tuned row."""
    done = fine_tuned(rows)
    random_rows = [r["acc_finetuned"] for r in done if r["tool"] == "random"]
    sd = quality.pooled_seed_sd(done, done[0]["model"], "acc_finetuned")
    seeds = len(done[0]["acc_finetuned_seeds"])
    lines = [f"- random allocations ({len(random_rows)}): fine-tuned accuracy {min(random_rows):.4f}-"
             f"{max(random_rows):.4f}, median {statistics.median(random_rows):.4f}" if random_rows else
             "- random allocations: none met the target",
             f"- seed-to-seed SD pooled over all {len(done)} rows: {sd:.4f}; standard error of a difference of two "
             f"{seeds}-seed means: {sd * (2 / seeds) ** 0.5:.4f}"]
    for tool, name in (("ours", "our best"), ("peer", "Torch-Pruning's best"), ("random", "best random")):
        best = next((r for r in done if r["tool"] == tool), None)
        if best is not None:
            rank = done.index(best) + 1
            below = quality.gap_in_errors(done, best, done[0], "acc_finetuned")
            lines.append(f"- {name}: {best['method']} {best['acc_finetuned']:.4f} (rank {rank} of {len(done)}; "
                         f"{below:.1f} SE below the top row)")
    failed = [r["method"] for r in rows if "error" in r]
    if failed:
        lines.append(f"- failed: {', '.join(failed)}")
    return lines


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    done = fine_tuned(rows)
    head = (f"### {done[0]['model']} at {args.target:.0%} MACs: {len(done)} rows, fine-tuned "
            f"{done[0].get('finetune_epochs')} epoch(s), {len(done[0]['acc_finetuned_seeds'])} seeds, "
            f"test split {done[0].get('test_images', '')}")
    table = ["| rank | method | convolution widths | MACs ratio | acc. after BN re-est. | acc. fine-tuned (seeds' range) |",
             "|---|---|---|---|---|---|"]
    for rank, r in enumerate(done, 1):
        table.append(f"| {rank} | {r['method']} | {' '.join(map(str, r['widths']))} | {r['macs_ratio']:.3f} | {r['acc_bn']:.4f} | "
                     f"{r['acc_finetuned']:.4f}{quality._spread(r)} |")
    return "\n".join([head, "", *summary(rows), "", *table, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion_mnist", help="as quality.py --data")
    parser.add_argument("--image-size", type=int, default=14)
    parser.add_argument("--model", default="default", choices=["default", "wide"])
    parser.add_argument("--baseline-epochs", type=int, default=10, help="as quality.py --baseline-epochs")
    parser.add_argument("--target", type=float, default=0.3, help="MACs target, a fraction of the unpruned model's")
    parser.add_argument("--samples", type=int, default=12, help="random allocations")
    parser.add_argument("--allocation-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=2, help="fine-tuning runs per pruned model")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if not 0 < args.target < 1 or args.samples < 1 or args.seeds < 2:
        raise SystemExit("--target must be in (0, 1), --samples >= 1 and --seeds >= 2 (the noise is measured)")
    rows = run(args, log=lambda s: print(s, flush=True))
    if not fine_tuned(rows):
        raise SystemExit(f"no method and no random allocation met {args.target:.0%} of the MACs: "
                         + "; ".join(f"{r['method']}: {r['error']}" for r in rows if "error" in r))
    text = markdown(rows, args)
    for path, content in ((args.json, json.dumps(rows, indent=1)), (args.markdown, text)):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".tmp").write_text(content)
            path.with_suffix(".tmp").replace(path)
    print(text)


if __name__ == "__main__":
    main()
