"""The `pruning` console script: one click command per pipeline stage (dvc.yaml calls the same commands).

Defaults are the paths dvc.yaml uses, so `pruning <stage>` from the repository root does what
`dvc repro <stage>` does, minus DVC's caching.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from stages.errors import StageError
from stages.params import load_params

DATA = "data/prepared"
BASELINE = "artifacts/baseline.pt"
IR = "artifacts/ir.pt"
CALIBRATED = "artifacts/ir_calibrated.pt"
LABELS = "artifacts/select/labels.json"
SUMMARY = "artifacts/select/summary.md"
PRUNED = "artifacts/pruned"
FINETUNED = "artifacts/finetuned"

_path = click.Path(path_type=Path)


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


def _opt(name: str, default: str, text: str) -> Callable:
    return click.option(f"--{name.replace('_', '-')}", name, type=_path, default=Path(default), show_default=True, help=text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Structured pruning pipeline: prepare -> train -> trace -> calibrate -> select -> prune -> finetune -> evaluate.

    Every command reads params.yaml (every key: docs/params.md); `dvc repro` runs them all with caching.
    """


@cli.command()
@_opt("out_dir", DATA, "Where the train/val/test tensor files go.")
@_stage("prepare")
def prepare(**_: Any) -> None:
    """Write the data set (`data.source`) as a seeded, stratified train/val/test split."""


@cli.command()
@_opt("data_dir", DATA, "Prepared data.")
@_opt("out_path", BASELINE, "Trained weights (state_dict, weights-only).")
@_opt("metrics_path", "artifacts/train_metrics.json", "Validation accuracy and final loss.")
@_stage("train")
def train(**_: Any) -> None:
    """Train the baseline model (`model.*`, `train.*`)."""


@cli.command()
@_opt("data_dir", DATA, "Prepared data (one validation batch is the example input).")
@_opt("baseline_path", BASELINE, "Baseline weights.")
@_opt("out_path", IR, "The PruningIR, saved with dill.")
@_stage("trace")
def trace(**_: Any) -> None:
    """Build the PruningIR of the baseline model and save it."""


@cli.command()
@_opt("data_dir", DATA, "Prepared data.")
@_opt("ir_path", IR, "The traced IR.")
@_opt("out_path", CALIBRATED, "The IR with label scores.")
@_stage("calibrate")
def calibrate(**_: Any) -> None:
    """Score the labels (`calibrate.criterion`: loss_aware or magnitude) over `calibrate.batches` batches."""


@cli.command()
@_opt("data_dir", DATA, "Prepared data (one sample sets the cost function's input).")
@_opt("ir_path", CALIBRATED, "The calibrated IR.")
@_opt("labels_path", LABELS, "Selected label indices (JSON).")
@_opt("summary_path", SUMMARY, "Readable per-layer channels before/after (Markdown).")
@_stage("select")
def select(**_: Any) -> None:
    """Choose the labels to prune (`select.method`: uniform, global or knapsack)."""


@cli.command()
@_opt("data_dir", DATA, "Prepared data (a few samples check the weights-only rebuild).")
@_opt("ir_path", CALIBRATED, "The calibrated IR.")
@_opt("labels_path", LABELS, "Selected label indices.")
@_opt("out_dir", PRUNED, "model.pt (dill), state_dict.pt + architecture.json (safe).")
@_stage("prune")
def prune(**_: Any) -> None:
    """Prune the selected labels and save the pruned model."""


@cli.command()
@_opt("data_dir", DATA, "Prepared data.")
@_opt("pruned_dir", PRUNED, "The pruned model.")
@_opt("out_dir", FINETUNED, "The fine-tuned model (same files as prune).")
@_stage("finetune")
def finetune(**_: Any) -> None:
    """Re-estimate BatchNorm statistics, then fine-tune `finetune.epochs` epochs with the `train` optimizer."""


@cli.command()
@_opt("data_dir", DATA, "Prepared data (the test split is evaluated).")
@_opt("baseline_path", BASELINE, "Baseline weights.")
@_opt("pruned_dir", PRUNED, "The pruned model.")
@_opt("finetuned_dir", FINETUNED, "The fine-tuned model.")
@_opt("summary_path", SUMMARY, "Selection summary (logged to MLflow).")
@_opt("metrics_path", "metrics.json", "DVC metrics.")
@_opt("channels_path", "plots/channels.json", "DVC plot rows: channels per layer before/after.")
@_opt("tradeoff_path", "plots/accuracy_latency.json", "DVC plot rows: accuracy against latency.")
@_opt("lock_path", "dvc.lock", "dvc.lock, for the stage-hash tags of the MLflow run.")
@_stage("evaluate")
def evaluate(**_: Any) -> None:
    """Measure baseline, pruned and fine-tuned models; write metrics and plots; log an MLflow run."""


if __name__ == "__main__":
    cli()
