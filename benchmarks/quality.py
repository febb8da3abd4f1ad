"""Quality at equal cost: our selectors against Torch-Pruning's importances on the pipeline's digits models.

    python -m benchmarks.quality [--targets 0.3 0.5 0.7] [--models default wide] [--quick]
                                 [--json benchmarks/results/quality.json]
    python -m benchmarks.quality --data fashion_mnist [--image-size 14] [--baseline-epochs 10] ...
    python -m benchmarks.quality ... --only "TP taylor global 3 steps" --json FILE --merge   # add rows to FILE

Models (data: the pipeline's prepared digits split under data/prepared, settings from params.yaml):
- ``default``: the pipeline's trained baseline (``artifacts/baseline.pt``, DigitsResNet width 32); trained
  here with the pipeline's own loop if the file is missing;
- ``wide``: the same factory with ``width: 64`` (4x the MACs), trained here with the pipeline's loop and
  settings (``train.*``), cached in ``benchmarks/.cache/``.

For each model and MACs target (fraction of the baseline's MACs, counted by ``pruning.latency.macs`` for
every method), methods:
- ours: ``LossAwareCriterion`` over ``calibrate.batches`` training batches (eval mode, BatchNorm statistics
  restored, as the ``calibrate`` stage does), then the ``select`` stage's own selection
  (``stages.select._select``): uniform and global bisect their ratio to meet the target, knapsack works
  to it directly; knapsack also in 3 steps (the ``select`` stage with ``select.steps: 3``:
  ``pruning.IterativeLabelSelector``, BatchNorm statistics re-estimated over ``select.bn_batches`` training
  batches and the model re-scored on the same calibration batches between steps); then the ``prune``
  stage's pruning (``prune.compensate``: the calibration means of removed input channels folded into the
  biases, ``pruning.compensation``; ``--compensate regression``: calibrated with input covariances, the kept
  weights also take the removed channels' least-squares prediction); and uniform (one-shot and in 3 steps) with ``MagnitudeCriterion``
  (``calibrate.criterion: magnitude``: relative weight norms; the same batches run forward for the means);
- peer: Torch-Pruning ``MagnitudeImportance`` and ``TaylorImportance`` (loss gradients over the *same*
  calibration batches), per layer (uniform) and global, ratio bisected to meet the same target
  (``benchmarks/peer.py``); and the peer's iterative mode (``iterative_steps=3``) for magnitude uniform and
  Taylor uniform and global, with the same BatchNorm re-estimation between steps and Taylor gradients taken
  again on each step's model.
Every pruned model then gets the same budget as the ``finetune`` stage: BatchNorm re-estimation over
``finetune.bn_batches`` batches and ``finetune.epochs`` epochs of the ``train`` optimizer, run ``--seeds``
times (seeds ``seed``, ``seed + 1``...: data order and optimizer state differ; every method sees the same
seeds). Accuracy on the test split: right after pruning, after BatchNorm re-estimation and after
fine-tuning (both means over the seeds; the table also gives the fine-tuned range). With a 270-image test
split one image is 0.0037, so a single fine-tuning run cannot rank methods that close; after the full
budget every method lands near 100% on this easy task. A second, short budget (``--short-epochs``, 1 by
default: one epoch with its own schedule, from the same re-estimated model and seeds) shows how much of
the starting point survives a brief fine-tuning. Latency (CPU, one thread): median over interleaved rounds of all models (each round: median
of ``latency.repeats`` forward passes after ``latency.warmup``), at batch 1 (``latency.batch_size``) and 64;
the unpruned model traced into a GraphModule (the form of our pruned models) is measured with them.

``--data`` takes any ``prepare`` source (``fashion_mnist``: Debian's ``dataset-fashion-mnist``); its split and
both models are then made here (the ``prepare`` stage's split; the models trained with the pipeline's loop)
and cached under ``benchmarks/.cache/``; everything above is the same.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from pruning import PruningIR, latency
from stages.calibrate import _batches, score
from stages.data import load_split, make_loader, read_meta
from stages.models import build_from_spec, build_model, load_checkpoint, model_spec
from stages.params import Params
from stages.select import _select, _select_in_steps, batchnorm_reestimation
from stages.training import accuracy, recalibrate_batchnorm, seed_everything, setup, train_epochs

from . import peer

ROOT = Path(__file__).resolve().parents[1]

STEPS = 3  # the iterative rows: selection steps (ours: select.steps; peer: iterative_steps)
# ours: (selector, steps, criterion)
OURS = (("uniform", 1, "loss_aware"), ("global", 1, "loss_aware"), ("knapsack", 1, "loss_aware"),
        ("knapsack", STEPS, "loss_aware"), ("uniform", 1, "magnitude"), ("uniform", STEPS, "magnitude"))
PEER = (tuple((imp, glob, 1) for imp in peer.IMPORTANCES for glob in (False, True))
        + (("magnitude", False, STEPS), ("taylor", False, STEPS), ("taylor", True, STEPS)))
CACHE = ROOT / "benchmarks" / ".cache"


def method_name(tool: str, method: tuple) -> str:
    """``ours knapsack (loss-aware)``, ``ours uniform 3 steps (magnitude)``, ``TP taylor global 3 steps``..."""
    if tool == "ours":
        select, steps, criterion = method
        return f"ours {select}{f' {steps} steps' if steps > 1 else ''} ({criterion.replace('_', '-')})"
    imp, glob, steps = method
    steps = f" {steps} steps" if steps > 1 else ""
    return f"TP {imp} {'global' if glob else 'uniform'}{steps}"


def all_method_names() -> list[str]:
    return [method_name("ours", m) for m in OURS] + [method_name("peer", m) for m in PEER]


def load_params(overrides: dict | None = None) -> Params:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in (overrides or {}).items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return Params(data)


def with_criterion(params: Params, criterion: str) -> Params:
    """``params`` with ``calibrate.criterion`` set (what ``select.steps`` re-scores with)."""
    data = copy.deepcopy(params.data)
    data["calibrate"]["criterion"] = criterion
    return Params(data)


def model_label(data: str, name: str) -> str:
    """How rows name a model: ``name`` on digits, ``"<data> <name>"`` on other data."""
    return name if data == "digits" else f"{data} {name}"


def train_loader(params: Params, data_dir: Path, seed: int):
    """The training split in ``data.batch_size`` batches, shuffled by ``seed`` (as the pipeline's stages load it)."""
    return make_loader(load_split(data_dir, "train"), params.get_int("data.batch_size"), shuffle=True, seed=seed)


def calibration_batches(params: Params, data_dir: Path) -> list:
    """The ``calibrate.batches`` training batches (seed ``seed``) that every method is calibrated on."""
    seed = params.get_int("seed")
    loader = train_loader(params, data_dir, seed)
    seed_everything(seed)
    return list(_batches(loader, params.get_int("calibrate.batches")))


def prepared_data(data: str, image_size: int, params: Params) -> Path:
    """The prepared split of ``data``: the pipeline's (``data/prepared``) for digits; for another source the
    ``prepare`` stage's own split (``seed``, ``data.*_fraction``, ``image_size``) cached under benchmarks/.cache."""
    if data == "digits":
        data_dir = ROOT / "data" / "prepared"
        if not (data_dir / "meta.json").exists():
            raise SystemExit("data/prepared is missing: run `make run` (or `.venv/bin/dvc repro prepare`) first")
        return data_dir
    # Named by every input of the split, so that changing one in params.yaml makes a new one.
    data_dir = CACHE / (f"{data}-{image_size}px-seed{params.get_int('seed')}-val{params.get_float('data.val_fraction')}"
                        f"-test{params.get_float('data.test_fraction')}")
    if not (data_dir / "meta.json").exists():
        from stages import prepare
        from stages.errors import StageError

        overrides = {"data.source": data, "data.image_size": image_size}
        try:
            prepare.run(load_params(overrides), data_dir)
        except StageError as error:
            raise SystemExit(f"quality --data {data}: {error}") from None
    return data_dir


def baseline(name: str, params: Params, data_dir: Path, device: torch.device, epochs: int | None = None
             ) -> nn.Module:
    """The trained model: the pipeline's baseline (digits), or the factory trained with the pipeline's loop and
    settings (``train.*``; ``epochs`` overrides ``train.epochs``) on ``data_dir``, cached next to the data."""
    meta = read_meta(data_dir)
    spec = model_spec(params, meta)
    digits = data_dir == ROOT / "data" / "prepared"
    if name == "default":
        model = build_from_spec(spec)
    elif name == "wide":
        model = build_model("digits_resnet", {"width": 64}, spec["in_channels"], spec["num_classes"])
    else:
        raise ValueError(f"unknown model {name!r} (default, wide)")
    if digits:
        path = ROOT / "artifacts" / "baseline.pt" if name == "default" else CACHE / "wide_baseline.pt"
    else:
        path = data_dir / f"{name}_baseline_{epochs or params.get_int('train.epochs')}ep.pt"
    if path.exists():
        load_checkpoint(model, str(path))
        return model.eval()
    seed_everything(params.get_int("seed"))
    loader = train_loader(params, data_dir, params.get_int("seed"))
    started = time.perf_counter()
    train_epochs(model, loader, params, epochs or params.get_int("train.epochs"), device, desc=f"train {name}")
    print(f"trained {name} in {time.perf_counter() - started:.0f}s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return model.eval()


def finetune(model: nn.Module, params: Params, data_dir: Path, device, test_loader, seeds: int = 1,
             short_epochs: int = 1) -> dict:
    """The ``finetune`` stage's budget on copies of ``model``, once per seed (``seed``, ``seed + 1``...: the
    data order and initial state of the optimizer differ); accuracies after BN re-estimation and after
    fine-tuning are the means over seeds, with the per-seed values kept.

    A second, short budget (``short_epochs`` epochs, its own learning-rate schedule) starts from the same
    re-estimated model with the same seed, after the full run (so the full run is what it was without it):
    with a budget short enough that the starting point still shows, the criterion's effect is measurable
    on a task that a full fine-tuning saturates."""
    result = {"acc_pruned": accuracy(model, test_loader, device), "acc_bn_seeds": [], "acc_finetuned_seeds": [],
              "acc_short_seeds": []}
    epochs = params.get_int("finetune.epochs")
    started = time.perf_counter()
    for offset in range(seeds):
        seed = params.get_int("seed") + offset
        tuned = copy.deepcopy(model)
        seed_everything(seed)
        loader = train_loader(params, data_dir, seed)
        recalibrate_batchnorm(tuned, loader, device, params.get_int("finetune.bn_batches"))
        result["acc_bn_seeds"].append(accuracy(tuned, test_loader, device))
        start = copy.deepcopy(tuned)
        train_epochs(tuned, loader, params, epochs, device, desc=f"finetune seed {seed}")
        result["acc_finetuned_seeds"].append(accuracy(tuned, test_loader, device))
        if short_epochs:
            seed_everything(seed)
            train_epochs(start, train_loader(params, data_dir, seed), params, short_epochs, device, desc=f"short finetune seed {seed}")
            result["acc_short_seeds"].append(accuracy(start, test_loader, device))
    result["finetune_s"] = time.perf_counter() - started
    result["finetune_epochs"] = epochs
    result["short_epochs"] = short_epochs
    # Rounded so that equal image counts give equal means (float sums in another order differ in the last bit).
    result["acc_bn"] = round(statistics.fmean(result["acc_bn_seeds"]), 9)
    result["acc_finetuned"] = round(statistics.fmean(result["acc_finetuned_seeds"]), 9)
    if short_epochs:
        result["acc_short"] = round(statistics.fmean(result["acc_short_seeds"]), 9)
    return result


def prune_all(name: str, targets: list[float], params: Params, data_dir: Path, device, log=print,
              baseline_epochs: int | None = None, label: str | None = None, only: set[str] | None = None) -> list[dict]:
    """Every method (``only``: those named) at every target for one model; returns rows with the pruned
    (unfinetuned) models. ``label`` names the model in the rows (default: ``name``)."""
    model = baseline(name, params, data_dir, device, baseline_epochs)
    name = label or name
    example = load_split(data_dir, "val").tensors[0][:1]
    batches = calibration_batches(params, data_dir)
    cost = latency.macs(example)
    base_macs = cost(model)
    irs = {}
    for criterion in dict.fromkeys(m[2] for m in OURS):
        irs[criterion] = PruningIR(copy.deepcopy(model), example_input=example)
        # as the calibrate stage does (calibrate.mode: eval)
        score(irs[criterion], batches, device, "eval", criterion=criterion,
              input_covariance=params.get_bool("calibrate.input_covariance"))
    between = batchnorm_reestimation(params, data_dir, params.get_int("seed"), device)  # as select.steps does
    rows = [{"model": name, "method": "baseline", "target": 1.0, "macs": base_macs, "pruned_model": model}]
    for target in targets:
        budget = target * base_macs
        for tool, method in [("ours", m) for m in OURS] + [("peer", m) for m in PEER]:
            row = {"model": name, "method": method_name(tool, method), "tool": tool, "target": target}
            if only is not None and row["method"] not in only:
                continue
            started = time.perf_counter()
            try:
                if tool == "ours":
                    select, steps, criterion = method
                    ir = irs[criterion]
                    labels = (_select(ir, params, select, cost, budget) if steps == 1 else
                              _select_in_steps(ir, with_criterion(params, criterion), select, cost, budget, steps,
                                               data_dir, params.get_int("seed"), device))
                    row["pruned_model"] = ir.prune(labels=labels, compensate=params.get("prune.compensate")).model
                else:
                    imp, glob, steps = method
                    pruned, row["ratio"] = peer.prune_to_cost(
                        model, example, cost, budget, num_classes=10, importance_name=imp, global_pruning=glob,
                        calibration=batches if imp == "taylor" else None, iterative_steps=steps,
                        between_steps=between)
                    row["pruned_model"] = pruned.eval()
            except Exception as error:  # noqa: BLE001 - the table reports failures
                row["error"] = f"{type(error).__name__}: {error}"
            row["select_s"] = time.perf_counter() - started
            rows.append(row)
            log(f"  {name} {target:.0%} {row['method']}: {row.get('error', 'ok')} ({row['select_s']:.1f}s)")
    for row in rows:
        if "pruned_model" in row:
            row["macs"] = cost(row["pruned_model"])
            row["params"] = sum(p.numel() for p in row["pruned_model"].parameters())
    return rows


def measure_latency(rows: list[dict], example: torch.Tensor, params: Params, rounds: int, batches=(1, 64)) -> None:
    """Interleaved rounds over all models: each round measures every model once per batch size."""
    warmup, repeats = params.get_int("latency.warmup"), params.get_int("latency.repeats")
    models = {(id(r), key): r[key] for r in rows for key in ("pruned_model", "traced_model") if key in r}
    samples = {(model_key, b): [] for model_key in models for b in batches}
    for _ in range(rounds):
        for b in batches:
            # batch 1: latency.warmup / latency.repeats as params.yaml says; larger batches: a fifth of them
            # (each pass is ~b times longer)
            scale = 1 if b == 1 else 5
            measure = latency.measured_latency(example[:1].expand(b, *example.shape[1:]).contiguous(),
                                               warmup=max(2, warmup // scale), repeats=max(10, repeats // scale))
            for model_key, model in models.items():
                samples[(model_key, b)].append(measure(model))
    for r in rows:
        for key, prefix in (("pruned_model", "latency"), ("traced_model", "latency_traced")):
            if key in r:
                for b in batches:
                    r[f"{prefix}_b{b}_ms"] = statistics.median(samples[((id(r), key), b)])


def run(models: list[str], targets: list[float], quick: bool, rounds: int, log=print, save=None,
        done: list[dict] | None = None, finetune_epochs: int | None = None, seeds: int = 1,
        short_epochs: int = 1, data: str = "digits", image_size: int = 14,
        baseline_epochs: int | None = None, only: set[str] | None = None, compensate: str | None = None
        ) -> list[dict]:
    """All models on ``data`` (``digits``: the pipeline's split and baseline; another ``prepare`` source: its
    split at ``image_size``, models trained for ``baseline_epochs``); ``save(rows)`` after each model; models
    already in ``done`` (rows of an earlier run) are kept as they are and not run again. Rows name a model
    by ``model_label``."""
    warnings.filterwarnings("ignore")
    overrides = {}
    if quick:
        overrides = {"finetune.epochs": 2, "calibrate.batches": 5, "latency.repeats": 20, "select.max_iterations": 5}
    if finetune_epochs is not None:
        overrides["finetune.epochs"] = finetune_epochs
    if compensate is not None:  # regression needs the covariances from calibration
        overrides.update({"prune.compensate": compensate, "calibrate.input_covariance": compensate == "regression"})
    params = load_params(overrides)
    _, device = setup(params)
    data_dir = prepared_data(data, image_size, params)
    test_loader = make_loader(load_split(data_dir, "test"), 256, shuffle=False, seed=0)
    example = load_split(data_dir, "val").tensors[0][:1]
    rows = []
    for name in models:
        label = model_label(data, name)
        earlier = [r for r in done or [] if r["model"] == label]
        if earlier:
            log(f"{label}: kept from the earlier run")
            rows += earlier
            continue
        log(f"{label}: selecting")
        model_rows = prune_all(name, targets, params, data_dir, device, log=log, baseline_epochs=baseline_epochs,
                               label=label, only=only)
        # The unpruned model as our pruned models are built (a torch.fx GraphModule): measured with the rest,
        # it separates the cost of the GraphModule's forward from the effect of pruning.
        base = model_rows[0]
        base["traced_model"] = PruningIR(copy.deepcopy(base["pruned_model"]), example_input=example).model.eval()
        measure_latency(model_rows, example, params, rounds)
        base = model_rows[0]
        for r in model_rows:
            if "pruned_model" not in r:
                continue
            for b in (1, 64):
                r[f"latency_ratio_b{b}"] = r[f"latency_b{b}_ms"] / base[f"latency_b{b}_ms"]
            r["macs_ratio"] = r["macs"] / base["macs"]
            r["test_images"] = len(test_loader.dataset)
            if r["method"] == "baseline":
                r.update({"acc_pruned": accuracy(copy.deepcopy(r["pruned_model"]), test_loader, device)})
                r["acc_bn"] = r["acc_finetuned"] = r["acc_pruned"]
            else:
                r.update(finetune(r["pruned_model"], params, data_dir, device, test_loader, seeds=seeds,
                                  short_epochs=short_epochs))
                log(f"  {name} {r['target']:.0%} {r['method']}: MACs {r['macs_ratio']:.3f}, acc {r['acc_pruned']:.3f} -> "
                    f"{r['acc_bn']:.3f} (BN) -> {r['acc_finetuned']:.3f}")
        for r in model_rows:
            r.pop("pruned_model", None)
            r.pop("traced_model", None)
        rows += model_rows
        if save is not None:
            save(rows)
    return rows


# The accuracies compared between the tools, best first. "Right after pruning" compares one-shot rows only: an
# iterative row of the peer carries the BatchNorm re-estimations made between its steps, while our iterative
# selection applies its labels to the unpruned model (fresh statistics are then the next column's job).
COMPARED = (("acc_finetuned", "after fine-tuning", "fine-tuned"), ("acc_short", "after the short fine-tuning", "short"),
            ("acc_bn", "after BatchNorm re-estimation", "BN"), ("acc_pruned", "right after pruning (one-shot rows)", "pruned"))


def compared(row: dict, key: str) -> bool:
    """Whether ``row`` takes part in the comparison of ``key`` (see ``COMPARED``)."""
    return (row["method"] != "baseline" and "error" not in row and key in row
            and not (key == "acc_pruned" and " steps" in row["method"]))


def _best(rows: list[dict], key: str) -> dict:
    """(model, target) -> best value of key among the compared rows of all methods."""
    best = {}
    for r in rows:
        if compared(r, key):
            k = (r["model"], r["target"])
            best[k] = max(best.get(k, -1.0), r[key])
    return best


def _spread(row: dict, key: str = "acc_finetuned") -> str:
    """`` (min-max)`` of the per-seed accuracies when there are several."""
    seeds = row.get(f"{key}_seeds", [])
    return f" ({min(seeds):.3f}-{max(seeds):.3f})" if len(seeds) > 1 else ""


SEEDED = ("acc_finetuned", "acc_short")  # means over fine-tuning runs: their gaps are compared with the seed noise
MEASURABLE = 2.0  # a gap of at least this many standard errors of the difference of two means is measurable


def pooled_seed_sd(rows: list[dict], model: str, key: str) -> float | None:
    """The seed-to-seed standard deviation of ``key`` pooled over every row of ``model`` with several seeds
    (one row's few seeds alone say little about its spread)."""
    squares, dof = 0.0, 0
    for r in rows:
        seeds = r.get(f"{key}_seeds") or []
        if r["model"] == model and len(seeds) > 1:
            squares += statistics.variance(seeds) * (len(seeds) - 1)
            dof += len(seeds) - 1
    return (squares / dof) ** 0.5 if dof else None


def gap_in_errors(rows: list[dict], ours: dict, peer: dict, key: str) -> float | None:
    """``peer[key] - ours[key]`` in standard errors of the difference of the two seed means (the seed SD pooled
    over the model's rows); None for an accuracy that is not a mean over several fine-tuning seeds."""
    n, m = len(ours.get(f"{key}_seeds") or []), len(peer.get(f"{key}_seeds") or [])
    sd = pooled_seed_sd(rows, ours["model"], key) if key in SEEDED and n > 1 and m > 1 else None
    return (peer[key] - ours[key]) / (sd * (1 / n + 1 / m) ** 0.5) if sd else None


def _verdict(rows: list[dict], row: dict) -> list[str]:
    """Our ``row`` against the best Torch-Pruning row at its (model, target), per compared accuracy; for the
    fine-tuned accuracies also the gap in standard errors (below ``MEASURABLE``: within the seed noise)."""
    parts = []
    for key, _, name in COMPARED:
        peers = [p for p in rows if p.get("tool") == "peer" and (p["model"], p["target"]) == (row["model"], row["target"])
                 and compared(p, key)]
        if compared(row, key) and peers:
            best = max(peers, key=lambda p: p[key])
            mark = "**loses**" if row[key] < best[key] else "ties" if row[key] == best[key] else "beats"
            errors = gap_in_errors(rows, row, best, key)
            if errors is not None and mark != "ties":
                mark += f" ({abs(errors):.1f} SE{'' if abs(errors) >= MEASURABLE else ', within noise'})"
            parts.append(f"{name}: {mark}")
    return parts


def markdown(rows: list[dict]) -> str:
    """One table per model; a method's cell is bold when it is the best at that target (ties included)."""
    best = {key: _best(rows, key) for key, _, _ in COMPARED}
    short = sorted({r["short_epochs"] for r in rows if r.get("short_epochs")})
    short_head = f" acc. after {'/'.join(map(str, short))}-epoch fine-tune (range) |" if short else ""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        out += [f"#### {model}", "",
                "| target | method | MACs (ratio) | params | latency b1 ms (ratio) | latency b64 ms (ratio) "
                "| acc. pruned | acc. after BN re-est. | acc. fine-tuned (seeds' range) |" + short_head + " verdict |",
                "|---|---|---|---|---|---|---|---|---|" + ("---|" if short else "") + "---|"]
        for r in (r for r in rows if r["model"] == model):
            label = "100%" if r["method"] == "baseline" else f"{r['target']:.0%}"
            if "error" in r:
                out.append(f"| {label} | {r['method']} | **error**: {r['error'][:150]} | | | | | | |"
                           + (" |" if short else "") + " |")
                continue
            k = (r["model"], r["target"])
            bold = lambda v, best: f"**{v:.3f}**" if best is not None and v >= best - 1e-12 else f"{v:.3f}"  # noqa: E731
            verdict = "; ".join(_verdict(rows, r)) if r.get("tool") == "ours" else ""
            out.append(
                f"| {label} | {r['method']} | {r['macs']:.3g} ({r['macs_ratio']:.3f}) | {r['params']:,} | "
                f"{r['latency_b1_ms']:.3f} ({r['latency_ratio_b1']:.2f}) | {r['latency_b64_ms']:.2f} ({r['latency_ratio_b64']:.2f}) | "
                f"{bold(r['acc_pruned'], best['acc_pruned'].get(k) if compared(r, 'acc_pruned') else None)} | "
                f"{bold(r['acc_bn'], best['acc_bn'].get(k) if compared(r, 'acc_bn') else None)} | "
                f"{bold(r['acc_finetuned'], best['acc_finetuned'].get(k) if compared(r, 'acc_finetuned') else None)}{_spread(r)} |"
                + ((f" {bold(r['acc_short'], best['acc_short'].get(k) if compared(r, 'acc_short') else None)}"
                    f"{_spread(r, 'acc_short')}" if "acc_short" in r else "") + " |" if short else "")
                + f" {verdict} |"
            )
        out.append("")
    return "\n".join(out)


def _parallel(models: list[str], args: argparse.Namespace) -> list[dict]:
    """One subprocess per model (each its own JSON), merged in model order."""
    import subprocess

    parts = {m: (args.json or CACHE / "quality.json").with_suffix(f".{m}.json") for m in models}
    done = {}
    if args.resume and args.json and args.json.exists() and not args.merge:
        for r in json.loads(args.json.read_text()):
            done.setdefault(r["model"], []).append(r)
    procs = {}
    for m in models:
        if model_label(args.data, m) in done:
            done[m] = done.pop(model_label(args.data, m))
            continue
        cmd = [sys.executable, "-m", __spec__.name, "--models", m, "--json", str(parts[m]), "--rounds", str(args.rounds),
               "--targets", *map(str, args.targets), "--data", args.data, "--image-size", str(args.image_size)]
        if args.baseline_epochs is not None:
            cmd += ["--baseline-epochs", str(args.baseline_epochs)]
        if args.quick:
            cmd.append("--quick")
        if args.finetune_epochs is not None:
            cmd += ["--finetune-epochs", str(args.finetune_epochs)]
        cmd += ["--seeds", str(args.seeds), "--short-epochs", str(args.short_epochs)]
        if args.only:
            cmd += ["--only", *args.only]
        if args.compensate:
            cmd += ["--compensate", args.compensate]
        procs[m] = subprocess.Popen(cmd, cwd=ROOT)
    for m, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"quality for {m} failed (exit {proc.returncode})")
        done[m] = json.loads(parts[m].read_text())
        parts[m].unlink()
    return [r for m in models for r in done[m]]


def merge_rows(earlier: list[dict], new: list[dict]) -> list[dict]:
    """``earlier`` with each (model, method, target) row that ``new`` has replaced by the new one; new methods go
    after the earlier rows of their model and target. Baseline rows stay the earlier ones (new rows' latency ratios
    are to the baseline measured with them, in their own run)."""
    key = lambda r: (r["model"], r["method"], r["target"])  # noqa: E731
    fresh = {key(r): r for r in new if r["method"] != "baseline"}
    out = [fresh.pop(key(r), r) for r in earlier]
    for r in fresh.values():
        same = [i for i, o in enumerate(out) if (o["model"], o["target"]) == (r["model"], r["target"])]
        out.insert(same[-1] + 1 if same else len(out), r)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["default", "wide"], choices=["default", "wide"])
    parser.add_argument("--targets", nargs="*", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds (median)")
    parser.add_argument("--quick", action="store_true",
                        help="default model, 50%% only, 2 fine-tuning epochs, 5 calibration batches, 2 latency rounds")
    parser.add_argument("--json", type=Path, help="write the rows as JSON (after every model)")
    parser.add_argument("--resume", action="store_true", help="keep the models already in --json, run the rest")
    parser.add_argument("--finetune-epochs", type=int,
                        help="fine-tuning epochs for every method (default: params.yaml finetune.epochs)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="fine-tuning runs per pruned model (seeds seed, seed+1, ...); accuracies are means")
    parser.add_argument("--short-epochs", type=int, default=1,
                        help="epochs of the second, short fine-tuning budget (0: none)")
    parser.add_argument("--jobs", type=int, default=1, help="models in parallel, one subprocess each (default 1)")
    parser.add_argument("--data", default="digits",
                        help="digits (the pipeline's split and baseline) or another `prepare` source such as "
                             "fashion_mnist (split with params.yaml's seed and fractions; models trained here)")
    parser.add_argument("--image-size", type=int, default=14, help="image side for --data other than digits")
    parser.add_argument("--baseline-epochs", type=int,
                        help="training epochs of the unpruned models on --data other than digits "
                             "(default: params.yaml train.epochs)")
    parser.add_argument("--only", nargs="+", choices=all_method_names(), metavar="METHOD",
                        help="run only these methods (row names, e.g. 'ours knapsack 3 steps (loss-aware)')")
    parser.add_argument("--compensate", choices=("mean", "regression"),
                        help="our rows' compensation (default: params.yaml prune.compensate; regression also records "
                             "the input covariances in calibration)")
    parser.add_argument("--merge", action="store_true",
                        help="merge this run's rows into the rows already in --json instead of replacing them")
    args = parser.parse_args()
    if args.merge and (args.resume or not args.json):
        raise SystemExit("--merge needs --json (the rows to merge into) and cannot be combined with --resume")
    earlier = json.loads(args.json.read_text()) if args.merge and args.json.exists() else []
    only = set(args.only) if args.only else None
    prepared_data(args.data, args.image_size, load_params())  # once, before any subprocess reads it
    models, targets, rounds = (["default"], [0.5], 2) if args.quick else (args.models, args.targets, args.rounds)
    if args.quick:
        args.seeds = 1

    def save(rows: list[dict]) -> list[dict]:
        rows = merge_rows(earlier, rows) if args.merge else rows
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.with_suffix(".tmp").write_text(json.dumps(rows, indent=1))
            args.json.with_suffix(".tmp").replace(args.json)
        return rows

    if args.jobs > 1 and len(models) > 1:
        print(markdown(save(_parallel(models, args))))
        return
    done = json.loads(args.json.read_text()) if args.resume and args.json and args.json.exists() else None
    rows = run(models, targets, args.quick, rounds, log=lambda s: print(s, flush=True), save=save, done=done,
               finetune_epochs=args.finetune_epochs, seeds=args.seeds, short_epochs=args.short_epochs,
               data=args.data, image_size=args.image_size, baseline_epochs=args.baseline_epochs, only=only,
               compensate=args.compensate)
    print(markdown(save(rows)))


if __name__ == "__main__":
    main()
