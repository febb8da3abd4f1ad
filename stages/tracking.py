"""MLflow: one run per pipeline run (logged by `evaluate`) and a new registered-model version for the
pruned model, named by what the run tried.

Store: `MLFLOW_TRACKING_URI` if set, else `mlflow.db` (SQLite) in the project root, with run artifacts in
`mlruns/` beside it. The project root is `DVC_ROOT`, which DVC sets for every stage command: the repository
for `dvc repro`, and the real repository (not DVC's temporary copy under `.dvc/tmp/exps/`, where the stage
runs and which is deleted afterwards) for `dvc exp run --queue` and `--temp`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import yaml
from torch import nn

from stages.errors import StageError
from stages.params import Params

# Tracking servers keep their own artifact store; every other URI is a database MLflow opens in this process.
_SERVER_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")


def project_root() -> Path:
    """The project's own directory: `DVC_ROOT` under DVC (see the module docstring), else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    """The URI MLflow logs to: `MLFLOW_TRACKING_URI`, else the project root's `mlflow.db`.

    Raises StageError for a relative local `MLFLOW_TRACKING_URI` while the stage runs in a copy of the
    project (a queued or `--temp` experiment): the store would be deleted with the copy.
    """
    explicit = os.environ.get("MLFLOW_TRACKING_URI")
    if not explicit:
        return f"sqlite:///{project_root() / 'mlflow.db'}"
    if _is_relative_local(explicit) and project_root() != Path.cwd().resolve():
        raise StageError(
            f"MLFLOW_TRACKING_URI={explicit} is relative to the working directory {Path.cwd()}, a temporary copy of "
            f"the project {project_root()} that DVC deletes after the experiment: set an absolute URI such as "
            f"sqlite:///{project_root() / 'mlflow.db'}, or unset MLFLOW_TRACKING_URI to log to the project's store")
    return explicit


def _is_relative_local(uri: str) -> bool:
    """A SQLite, file or plain-path URI whose path is relative to the working directory."""
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        return not path.startswith("/") and path != ":memory:"
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        return not os.path.isabs(urlparse(uri).path if scheme else uri)
    return False


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its run artifacts: `mlruns/<experiment>` in the project root for a
    local database (MLflow's own default, `./mlruns`, would follow the working directory into DVC's
    temporary copy); None, the server's choice, for a tracking server."""
    if urlparse(uri).scheme in _SERVER_SCHEMES:
        return None
    return (project_root() / "mlruns" / _slug(experiment)).as_uri()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _model_and_data(params: Params) -> tuple[str, str]:
    """Short names of `model.name` ('package.module:factory' -> 'package.module.factory') and of
    `data.source` (a directory -> its last part)."""
    model = params.get_str("model.name").replace(":", ".")
    source = params.get_str("data.source")
    return _slug(model), _slug(Path(source).name)


def mlflow_names(params: Params) -> tuple[str, str]:
    """(experiment, registered model): `mlflow.experiment` and `mlflow.registered_model` where params.yaml
    names them, else `pruning-<model>-<data>` and `<model>-<data>-pruned`, so that a model or data set of
    one's own never lands among another model's runs and versions."""
    model, data = _model_and_data(params)
    experiment = params.get_str("mlflow.experiment", optional=True) or f"pruning-{model}-{data}"
    registered = params.get_str("mlflow.registered_model", optional=True) or f"{model}-{data}-pruned"
    return experiment, registered


def _target_text(params: Params) -> str:
    """What the selection aimed at: a ratio or count of labels, or the cost target."""
    method = params.get_str("select.method")
    if method == "global" and params.get("select.n") is not None:
        return f"n={params.get_int('select.n', min=0)}"
    if method in ("uniform", "global") and params.get("select.ratio") is not None:
        return f"ratio={params.get_float('select.ratio'):g}"
    cost = params.get_str("select.latency")
    target = params.get_float("select.target")
    relative = params.get_str("select.target_mode") == "relative"
    return f"{cost}={target:.0%}" if relative else f"{cost}={target:g}"


def run_name(params: Params) -> str:
    """What the run tried, most telling first (the UI's runs list cuts long names):
    'knapsack macs=50% on digits_resnet', with the steps and criterion where they are not the defaults."""
    model, _ = _model_and_data(params)
    parts = [params.get_str("select.method"), _target_text(params)]
    steps = params.get_int("select.steps", min=1)
    if steps > 1:
        parts.append(f"steps={steps}")
    criterion = params.get_str("calibrate.criterion")
    if criterion != "loss_aware":
        parts.append(criterion)
    return " ".join([*parts, "on", model])


def run_description(params: Params, metrics: dict[str, Any]) -> str:
    """One line for the run's description: what was tried and what came of it."""
    model, data = _model_and_data(params)
    steps = params.get_int("select.steps", min=1)
    acc, ratio = metrics["accuracy"], metrics["ratio"]
    return (
        f"{params.get_str('select.method')} selection to {_target_text(params)} of {model} on {data}"
        f" ({params.get_str('calibrate.criterion')} scores{f', {steps} steps' if steps > 1 else ''}):"
        f" test accuracy {acc['baseline']:.4f} baseline, {acc['pruned']:.4f} pruned, {acc['finetuned']:.4f} fine-tuned;"
        f" MACs x{ratio['macs']:.3f}, params x{ratio['params']:.3f}, latency x{ratio['latency']:.3f}"
    )


def git_tags() -> dict[str, str]:
    """The commit the run started from and whether the work tree had uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(dirty.strip())).lower()}


def dvc_stage_tags(lock_path: Path) -> dict[str, str]:
    """`dvc.stage.<name>`: a short hash of each stage's dvc.lock entry (its deps, params and outs).

    `evaluate` runs last, so its own entry is the previous run's; the upstream entries are this run's.
    """
    if not lock_path.is_file():
        return {}
    stages = (yaml.safe_load(lock_path.read_text()) or {}).get("stages", {})
    return {
        f"dvc.stage.{name}": hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]
        for name, entry in stages.items()
        if name != "evaluate"
    }


def environment_tags(device: torch.device) -> dict[str, str]:
    """Where latency was measured: it only compares between runs on the same machine and settings."""
    return {
        "latency.device": str(device),
        "latency.host": platform.node(),
        "latency.cpu": platform.processor() or platform.machine(),
        "latency.torch_threads": str(torch.get_num_threads()),
        "torch.version": torch.__version__,
    }


def log_pipeline_run(
    *,
    uri: str,
    experiment: str,
    run_name: str,
    description: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: list[tuple[Path, str | None]],
    model: nn.Module,
    example: torch.Tensor,
    registered_model: str,
) -> tuple[str, str]:
    """Log one run to the store at `uri` and register `model` as a new version of `registered_model`;
    returns (run id, version).

    `description` becomes the run's description (the `mlflow.note.content` tag). `artifacts` are (file,
    folder in the run or None). The model is registered in MLflow's `pt2` format (torch.export: loading it
    runs no pickled code); `example` needs a batch of 2 or more so that the batch dimension is exported as
    dynamic.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    found = MlflowClient(uri).get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else MlflowClient(uri).create_experiment(
        experiment, artifact_location=artifact_location(uri, experiment))
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, description=description) as run:
        mlflow.log_params({key: _param_value(value) for key, value in params.items()})
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        for path, folder in artifacts:
            mlflow.log_artifact(str(path), artifact_path=folder)
        info = mlflow.pytorch.log_model(
            model.cpu().eval(),
            name="model",
            serialization_format="pt2",
            input_example=example.numpy(),
            registered_model_name=registered_model,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    return run.info.run_id, str(info.registered_model_version)


def _param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) or value is None else str(value)
