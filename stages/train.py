"""Stage `train`: the baseline model, saved weights-only (the model is rebuilt from params.yaml)."""

from __future__ import annotations

from pathlib import Path

from stages.artifacts import save_state_dict, write_json
from stages.data import load_split, make_loader, read_meta
from stages.models import build_from_spec, load_checkpoint, model_spec
from stages.params import Params
from stages.training import accuracy, setup, train_epochs


def run(params: Params, data_dir: Path, out_path: Path, metrics_path: Path) -> None:
    """Build `model.name` (optionally from `model.checkpoint`), train `train.epochs` epochs, save the weights."""
    seed, device = setup(params)
    batch_size = params.get_int("data.batch_size", min=1)
    epochs = params.get_int("train.epochs", min=0)
    checkpoint = params.get_str("model.checkpoint", optional=True)
    model = build_from_spec(model_spec(params, read_meta(data_dir)))
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    train_loader = make_loader(load_split(data_dir, "train"), batch_size, shuffle=True, seed=seed)
    losses = train_epochs(model, train_loader, params, epochs, device, desc="train")
    val_loader = make_loader(load_split(data_dir, "val"), batch_size, shuffle=False, seed=seed)
    val_accuracy = accuracy(model, val_loader, device)
    print(f"train: {epochs} epochs, final loss {losses[-1] if losses else float('nan'):.4f}, val accuracy {val_accuracy:.4f}")
    save_state_dict(model.state_dict(), out_path)
    write_json({"val_accuracy": val_accuracy, "final_loss": losses[-1] if losses else None}, metrics_path)
