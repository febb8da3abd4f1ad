"""The `pruning` console script: one click command per pipeline stage (dvc.yaml calls the same commands).

Path defaults come from the `paths` of dvc.yaml's `vars`, the one place the pipeline's file names are
written, so `pruning <stage>` from the repository root does what `dvc repro <stage>` does, minus DVC's
caching. Without a dvc.yaml in the working directory every path option is required.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from stages.errors import StageError
from stages.params import load_params

_path = click.Path(path_type=Path)


def pipeline_paths(dvc_yaml: Path = Path("dvc.yaml")) -> dict[str, str]:
    """The `paths` mapping of `dvc_yaml`'s `vars` (name -> path); empty without a `dvc_yaml` that has one."""
    if not dvc_yaml.is_file():
        return {}
    for entry in (yaml.safe_load(dvc_yaml.read_text()) or {}).get("vars", []):
        if isinstance(entry, dict) and "paths" in entry:
            return dict(entry["paths"])
    return {}


PATHS = pipeline_paths()


def _stage(module: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Load params.yaml, call `stages.<module>.run(params, **options)`, print StageError as a clean error."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @click.option("--params", "params_path", type=_path, default=Path("params.yaml"), show_default=True,
                      help="Parameters file.")
        @functools.wraps(command)
        def wrapper(params_path: Path, **options: Any) -> None:
            try:
                run = importlib.import_module(f"stages.{module}").run
                run(load_params(params_path), **options)
            except StageError as exc:
                raise click.ClickException(str(exc)) from exc

        return wrapper

    return decorate


def _opt(name: str, key: str, text: str) -> Callable:
    """A path option whose default is `paths.<key>` of dvc.yaml (required without one)."""
    default = PATHS.get(key)
    return click.option(f"--{name.replace('_', '-')}", name, type=_path, default=default and Path(default),
                        required=default is None, show_default=True, help=text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Structured pruning pipeline: prepare -> train -> trace -> calibrate -> select -> prune -> finetune -> evaluate.

    Every command reads params.yaml (every key: docs/params.md); `dvc repro` runs them all with caching.
    """


@cli.command()
@_opt("out_dir", "data", "Where the train/val/test tensor files go.")
@_stage("prepare")
def prepare(**_: Any) -> None:
    """Write the data set (`data.source`) as a seeded, stratified train/val/test split."""


@cli.command()
@_opt("data_dir", "data", "Prepared data.")
@_opt("out_path", "baseline", "Trained weights (state_dict, weights-only).")
@_opt("metrics_path", "train_metrics", "Validation accuracy and final loss.")
@_stage("train")
def train(**_: Any) -> None:
    """Train the baseline model (`model.*`, `train.*`)."""


@cli.command()
@_opt("data_dir", "data", "Prepared data (one validation batch is the example input).")
@_opt("baseline_path", "baseline", "Baseline weights.")
@_opt("out_path", "ir", "The PruningIR, saved with dill.")
@_stage("trace")
def trace(**_: Any) -> None:
    """Build the PruningIR of the baseline model and save it."""


@cli.command()
@_opt("data_dir", "data", "Prepared data.")
@_opt("ir_path", "ir", "The traced IR.")
@_opt("out_path", "calibrated", "The IR with label scores.")
@_stage("calibrate")
def calibrate(**_: Any) -> None:
    """Score the labels (`calibrate.criterion`: loss_aware or magnitude) over `calibrate.batches` batches."""


@cli.command()
@_opt("data_dir", "data", "Prepared data (one sample sets the cost function's input).")
@_opt("ir_path", "calibrated", "The calibrated IR.")
@_opt("labels_path", "labels", "Selected label indices (JSON).")
@_opt("summary_path", "summary", "Readable per-layer channels before/after (Markdown).")
@_stage("select")
def select(**_: Any) -> None:
    """Choose the labels to prune (`select.method`: uniform, global or knapsack)."""


@cli.command()
@_opt("data_dir", "data", "Prepared data (a few samples check the weights-only rebuild).")
@_opt("ir_path", "calibrated", "The calibrated IR.")
@_opt("labels_path", "labels", "Selected label indices.")
@_opt("out_dir", "pruned", "model.pt (dill), state_dict.pt + architecture.json (safe).")
@_stage("prune")
def prune(**_: Any) -> None:
    """Prune the selected labels and save the pruned model."""


@cli.command()
@_opt("data_dir", "data", "Prepared data.")
@_opt("pruned_dir", "pruned", "The pruned model.")
@_opt("out_dir", "finetuned", "The fine-tuned model (same files as prune).")
@_stage("finetune")
def finetune(**_: Any) -> None:
    """Re-estimate BatchNorm statistics, then fine-tune `finetune.epochs` epochs with the `train` optimizer."""


@cli.command()
@_opt("data_dir", "data", "Prepared data (the test split is evaluated).")
@_opt("baseline_path", "baseline", "Baseline weights.")
@_opt("pruned_dir", "pruned", "The pruned model.")
@_opt("finetuned_dir", "finetuned", "The fine-tuned model.")
@_opt("summary_path", "summary", "Selection summary (logged to MLflow).")
@_opt("metrics_path", "metrics", "DVC metrics.")
@_opt("channels_path", "channels", "DVC plot rows: channels per layer before/after.")
@_opt("tradeoff_path", "tradeoff", "DVC plot rows: accuracy against latency.")
@_opt("channels_plot", "channels_plot", "PNG plot: channels per layer before/after.")
@_opt("tradeoff_plot", "tradeoff_plot", "PNG plot: accuracy against latency.")
@click.option("--lock-path", "lock_path", type=_path, default=Path("dvc.lock"), show_default=True,
              help="dvc.lock, for the stage-hash tags of the MLflow run.")
@_stage("evaluate")
def evaluate(**_: Any) -> None:
    """Measure baseline, pruned and fine-tuned models; write metrics and plots; log an MLflow run."""


if __name__ == "__main__":
    cli()
