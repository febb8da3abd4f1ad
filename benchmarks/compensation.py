"""Compensation at equal MACs: none, mean and regression (``ir.prune(compensate=...)``) side by side.

    python -m benchmarks.compensation [--data digits|fashion_mnist] [--models default wide]
                                      [--targets 0.3 0.5 0.7] [--seeds 2] [--json F] [--markdown F]

The quality benchmark's models, data, calibration batches and selection (``benchmarks/quality.py``): per
model, one ``LossAwareCriterion(ir, input_covariance=True)`` calibration (so all three compensations prune
the very same labels), then for each target and each of our selectors (uniform, global, knapsack) the same
labels pruned three ways. Torch-Pruning's one-shot methods (magnitude and Taylor, uniform and global, as in
the quality benchmark) are pruned to the same targets for reference; the peer compensates nothing.
Accuracy on the test split right after pruning and after BatchNorm re-estimation (``finetune.bn_batches``
training batches, seed ``seed``); with ``--seeds N`` also after the ``finetune`` stage's budget
(``--finetune-epochs``), mean over N seeds, for mean and regression only. Calibration seconds with and
without covariances (median of ``--repeats``, interleaved) give the recording's cost.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from pathlib import Path

from pruning import PruningIR, latency
from stages.calibrate import score
from stages.data import load_split, make_loader
from stages.select import _select
from stages.training import accuracy, recalibrate_batchnorm, seed_everything, setup

from . import peer, quality

SELECTORS = ("uniform", "global", "knapsack")
COMPENSATIONS = (False, "mean", "regression")


def calibration_seconds(model, example, batches, device, repeats: int) -> dict[str, float]:
    """Median seconds of one loss-aware calibration over ``batches``, without and with covariances
    (interleaved, on fresh IRs)."""
    times: dict[str, list[float]] = {"means": [], "covariances": []}
    for _ in range(repeats):
        for key in times:
            ir = PruningIR(copy.deepcopy(model), example_input=example)
            started = time.perf_counter()
            score(ir, batches, device, "eval", input_covariance=key == "covariances")
            times[key].append(time.perf_counter() - started)
    return {key: statistics.median(values) for key, values in times.items()}


def after_bn(model, params, data_dir, device, test_loader) -> float:
    """Test accuracy after the ``finetune`` stage's BatchNorm re-estimation (seed ``seed``)."""
    model = copy.deepcopy(model)
    seed = params.get_int("seed")
    seed_everything(seed)
    recalibrate_batchnorm(model, quality.train_loader(params, data_dir, seed), device, params.get_int("finetune.bn_batches"))
    return accuracy(model, test_loader, device)


def run_model(name: str, args, params, data_dir, device, test_loader, log=print) -> list[dict]:
    model = quality.baseline(name, params, data_dir, device, args.baseline_epochs)
    label = quality.model_label(args.data, name)
    example = load_split(data_dir, "val").tensors[0][:1]
    batches = quality.calibration_batches(params, data_dir)
    cost = latency.macs(example)
    base = cost(model)
    seconds = calibration_seconds(model, example, batches, device, args.repeats)
    log(f"{label}: calibration {seconds['means']:.2f}s, with covariances {seconds['covariances']:.2f}s")
    ir = PruningIR(copy.deepcopy(model), example_input=example)
    score(ir, batches, device, "eval", input_covariance=True)
    rows = [{"model": label, "method": "baseline", "target": 1.0, "macs_ratio": 1.0,
             "acc_pruned": accuracy(copy.deepcopy(model), test_loader, device), "calibration_s": seconds}]
    for target in args.targets:
        for selector in SELECTORS:
            labels = _select(ir, params, selector, cost, target * base)
            for how in COMPENSATIONS:
                pruned = ir.prune(labels=labels, compensate=how).model.eval()
                row = {"model": label, "target": target, "method": f"ours {selector} (loss-aware)",
                       "compensation": how or "none", "macs_ratio": cost(pruned) / base,
                       "acc_pruned": accuracy(copy.deepcopy(pruned), test_loader, device),
                       "acc_bn": after_bn(pruned, params, data_dir, device, test_loader)}
                if args.seeds and how:
                    tuned = quality.finetune(pruned, params, data_dir, device, test_loader, seeds=args.seeds,
                                             short_epochs=0)
                    row["acc_finetuned"], row["acc_finetuned_seeds"] = tuned["acc_finetuned"], tuned["acc_finetuned_seeds"]
                rows.append(row)
                log(f"  {label} {target:.0%} {selector} {row['compensation']}: {row['acc_pruned']:.4f} -> "
                    f"{row['acc_bn']:.4f} (BN)" + (f" -> {row['acc_finetuned']:.4f}" if "acc_finetuned" in row else ""))
        for imp in peer.IMPORTANCES:
            for glob in (False, True):
                pruned, _ = peer.prune_to_cost(model, example, cost, target * base, num_classes=10, importance_name=imp,
                                               global_pruning=glob, calibration=batches if imp == "taylor" else None)
                pruned.eval()
                row = {"model": label, "target": target,
                       "method": f"TP {imp} {'global' if glob else 'uniform'}", "compensation": "none",
                       "macs_ratio": cost(pruned) / base,
                       "acc_pruned": accuracy(copy.deepcopy(pruned), test_loader, device),
                       "acc_bn": after_bn(pruned, params, data_dir, device, test_loader)}
                rows.append(row)
                log(f"  {label} {target:.0%} {row['method']}: {row['acc_pruned']:.4f} -> {row['acc_bn']:.4f} (BN)")
    return rows


def markdown(rows: list[dict], seeds: int) -> str:
    """One table per model: each of our (target, selector) pairs on one line with its three compensations,
    then the peer's best one-shot method at that target for reference."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        ours = [r for r in rows if r["model"] == model and r["method"].startswith("ours")]
        head = "| target | method | MACs | acc. pruned: none / mean / regression | after BN re-est.: none / mean / regression |"
        head += " fine-tuned: mean / regression |" if seeds else ""
        out += [f"#### {model}", "", head, "|---|---|---|---|---|" + ("---|" if seeds else "")]
        for target in dict.fromkeys(r["target"] for r in ours):
            for method in dict.fromkeys(r["method"] for r in ours if r["target"] == target):
                by = {r["compensation"]: r for r in ours if r["target"] == target and r["method"] == method}
                line = (f"| {target:.0%} | {method} | {by['none']['macs_ratio']:.3f} | "
                        + " / ".join(f"{by[c]['acc_pruned']:.3f}" for c in ("none", "mean", "regression")) + " | "
                        + " / ".join(f"{by[c]['acc_bn']:.3f}" for c in ("none", "mean", "regression")) + " |")
                if seeds:
                    line += " " + " / ".join(f"{by[c]['acc_finetuned']:.4f}" for c in ("mean", "regression")) + " |"
                out.append(line)
            peers = [r for r in rows if r["model"] == model and r["target"] == target and r["method"].startswith("TP")]
            for key, what in (("acc_pruned", "right after pruning"), ("acc_bn", "after BN re-est.")):
                best = max(peers, key=lambda r: r[key])
                out.append(f"| {target:.0%} | best Torch-Pruning {what}: {best['method']} | {best['macs_ratio']:.3f} | "
                           f"{best['acc_pruned']:.3f} | {best['acc_bn']:.3f} |" + (" |" if seeds else ""))
        base = next(r for r in rows if r["model"] == model and r["method"] == "baseline")
        seconds = base["calibration_s"]
        out += ["", f"Unpruned: {base['acc_pruned']:.3f}. Calibration ({seconds['means']:.2f} s with means, "
                f"{seconds['covariances']:.2f} s with covariances too: {seconds['covariances'] / seconds['means']:.2f}x).", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", help="digits or another `prepare` source (fashion_mnist)")
    parser.add_argument("--models", nargs="*", default=["default", "wide"], choices=["default", "wide"])
    parser.add_argument("--targets", nargs="*", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--seeds", type=int, default=0, help="fine-tuning runs per pruned model (0: none)")
    parser.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (default: params.yaml finetune.epochs)")
    parser.add_argument("--baseline-epochs", type=int, help="training epochs of the models on data other than digits")
    parser.add_argument("--image-size", type=int, default=14, help="image side for --data other than digits")
    parser.add_argument("--repeats", type=int, default=5, help="calibration timings (median)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    parser.add_argument("--markdown", type=Path, help="write the tables as Markdown")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    params = quality.load_params({"finetune.epochs": args.finetune_epochs} if args.finetune_epochs else None)
    _, device = setup(params)
    data_dir = quality.prepared_data(args.data, args.image_size, params)
    test_loader = make_loader(load_split(data_dir, "test"), 256, shuffle=False, seed=0)
    rows = []
    for name in args.models:
        rows += run_model(name, args, params, data_dir, device, test_loader, log=lambda s: print(s, flush=True))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.with_suffix(".tmp").write_text(json.dumps(rows, indent=1))
        args.json.with_suffix(".tmp").replace(args.json)
    text = markdown(rows, args.seeds)
    if args.markdown:
        args.markdown.with_suffix(".tmp").write_text(text + "\n")
        args.markdown.with_suffix(".tmp").replace(args.markdown)
    print(text)


if __name__ == "__main__":
    main()
