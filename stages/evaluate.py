"""Stage `evaluate`: accuracy, MACs, parameters and measured latency of the baseline, pruned and fine-tuned
models into metrics.json, DVC plot rows (JSON) and PNG plots, then one MLflow run for the whole pipeline run.

Measured latency is wall-clock time on this machine. dvc.yaml marks metrics.json `persist: true`, which
keeps this stage out of DVC's run-cache: it is never "restored" with figures measured elsewhere or earlier,
and every evaluate that DVC reports as run has really measured and logged its MLflow run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torch import nn

from stages.artifacts import load_state_dict, write_json
from stages.bundle import ARCHITECTURE_FILE, WEIGHTS_FILE, load_bundle
from stages.costs import cost_function
from stages.data import load_split, make_loader, read_meta
from stages.models import build_from_spec, model_spec
from stages.params import Params, flatten
from stages.plots import channels_figure, tradeoff_figure
from stages.report import layer_channels
from stages.tracking import (dvc_stage_tags, environment_tags, git_tags, log_pipeline_run, mlflow_names, run_description,
                             run_name, tracking_uri)
from stages.training import accuracy, setup

_LATENCY_ROUNDS = 3


def _interleaved_latency(measure: Callable[[nn.Module], float], models: dict[str, nn.Module]) -> dict[str, float]:
    """Alternate the models over a few rounds and keep each one's fastest median, so that a burst of load
    on a shared machine hits both models alike instead of skewing their ratio."""
    rounds = {name: [] for name in models}
    for _ in range(_LATENCY_ROUNDS):
        for name, model in models.items():
            rounds[name].append(measure(model))
    return {name: min(values) for name, values in rounds.items()}


def run(
    params: Params,
    data_dir: Path,
    baseline_path: Path,
    pruned_dir: Path,
    finetuned_dir: Path,
    summary_path: Path,
    metrics_path: Path,
    channels_path: Path,
    tradeoff_path: Path,
    channels_plot: Path,
    tradeoff_plot: Path,
    lock_path: Path = Path("dvc.lock"),
) -> None:
    """Measure the three models, write metrics, plot rows and PNG plots, log and register with MLflow."""
    seed, device = setup(params)
    uri = tracking_uri()  # before the measurements: a store that would be lost fails the stage at once
    experiment, registered_model = mlflow_names(params)
    tried = run_name(params)
    spec = model_spec(params, read_meta(data_dir))
    baseline = build_from_spec(spec)
    baseline.load_state_dict(load_state_dict(baseline_path))
    models = {"baseline": baseline, "pruned": load_bundle(pruned_dir), "finetuned": load_bundle(finetuned_dir)}
    test = load_split(data_dir, "test")
    loader = make_loader(test, params.get_int("data.batch_size", min=1), shuffle=False, seed=seed)
    example = test.tensors[0][:8]
    costs = {name: cost_function(name, params, example, device) for name in ("macs", "params", "latency")}

    acc = {name: accuracy(model, loader, device) for name, model in models.items()}
    compared = {name: models[name].to(device) for name in ("baseline", "finetuned")}
    measured = {name: {cost: costs[cost](model) for cost in ("macs", "params")} for name, model in compared.items()}
    for name, latency_ms in _interleaved_latency(costs["latency"], compared).items():
        measured[name]["latency"] = latency_ms
    metrics = {
        "accuracy": acc,
        "accuracy_drop": acc["baseline"] - acc["finetuned"],
        "macs": {name: m["macs"] for name, m in measured.items()},
        "params": {name: m["params"] for name, m in measured.items()},
        "latency_ms": {name: m["latency"] for name, m in measured.items()},
        "ratio": {cost: measured["finetuned"][cost] / measured["baseline"][cost] for cost in costs},
    }
    rows = layer_channels(baseline, models["finetuned"])
    # The pruned and fine-tuned models share one architecture, so one latency measurement serves both.
    points = [
        {"model": name, "accuracy": acc[name], "latency_ms": measured[key]["latency"], "macs": measured[key]["macs"]}
        for name, key in (("baseline", "baseline"), ("pruned", "finetuned"), ("finetuned", "finetuned"))
    ]
    write_json(rows, channels_path)
    write_json(points, tradeoff_path)
    write_json(metrics, metrics_path)
    channels_figure(rows, channels_plot)
    tradeoff_figure(points, tradeoff_plot)
    print(
        f"evaluate: test accuracy {acc['baseline']:.4f} baseline, {acc['pruned']:.4f} pruned, "
        f"{acc['finetuned']:.4f} fine-tuned; MACs x{metrics['ratio']['macs']:.3f}, "
        f"params x{metrics['ratio']['params']:.3f}, latency x{metrics['ratio']['latency']:.3f}"
    )

    flat_metrics = {key: float(value) for key, value in flatten(metrics).items()}
    flat_metrics.update({f"kept_ratio.{row['layer']}": row["kept_ratio"] for row in rows})
    tags = {**git_tags(), **dvc_stage_tags(lock_path), **environment_tags(device)}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    run_id, version = log_pipeline_run(
        uri=uri,
        experiment=experiment,
        run_name=tried,
        description=run_description(params, metrics),
        params=flatten(params.data),
        metrics=flat_metrics,
        tags=tags,
        artifacts=[
            (summary_path, None), (metrics_path, None), (channels_plot, "plots"), (tradeoff_plot, "plots"),
            (finetuned_dir / WEIGHTS_FILE, "safe_model"), (finetuned_dir / ARCHITECTURE_FILE, "safe_model"),
        ],
        model=models["finetuned"],
        example=example,
        registered_model=registered_model,
    )
    print(f"evaluate: MLflow run {run_id} '{tried}' in '{experiment}' at {uri}, "
          f"registered '{registered_model}' version {version}")
