"""MLflow: one run per pipeline run (logged by `evaluate`) and a new registered-model version for the
pruned model. Tracking URI: `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in the working directory."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    """The URI MLflow logs to."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


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
    experiment: str,
    run_name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: list[tuple[Path, str | None]],
    model: nn.Module,
    example: torch.Tensor,
    registered_model: str,
) -> tuple[str, str]:
    """Log one run and register `model` as a new version of `registered_model`; returns (run id, version).

    `artifacts` are (file, folder in the run or None). The model is registered in MLflow's `pt2` format
    (torch.export: loading it runs no pickled code); `example` needs a batch of 2 or more so that the batch
    dimension is exported as dynamic.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name) as run:
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
