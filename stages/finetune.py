"""Stage `finetune`: re-estimate BatchNorm statistics of the pruned model, then train it N epochs with the
optimizer settings of `train`."""

from __future__ import annotations

from pathlib import Path

from stages.artifacts import read_json
from stages.bundle import ARCHITECTURE_FILE, load_bundle, save_bundle
from stages.data import load_split, make_loader
from stages.params import Params
from stages.training import accuracy, recalibrate_batchnorm, setup, train_epochs


def run(params: Params, data_dir: Path, pruned_dir: Path, out_dir: Path) -> None:
    """Fine-tune the pruned model and save it in the same two forms as `prune`."""
    seed, device = setup(params)
    batch_size = params.get_int("data.batch_size", min=1)
    epochs = params.get_int("finetune.epochs", min=0)
    bn_batches = params.get_int("finetune.bn_batches", min=0)
    model = load_bundle(pruned_dir).to(device)
    train_loader = make_loader(load_split(data_dir, "train"), batch_size, shuffle=True, seed=seed)
    val_loader = make_loader(load_split(data_dir, "val"), batch_size, shuffle=False, seed=seed)
    before = accuracy(model, val_loader, device)
    if bn_batches:
        recalibrate_batchnorm(model, train_loader, device, bn_batches)
    after_bn = accuracy(model, val_loader, device)
    train_epochs(model, train_loader, params, epochs, device, desc="finetune")
    after = accuracy(model, val_loader, device)
    print(f"finetune: val accuracy {before:.4f} pruned, {after_bn:.4f} after BatchNorm re-estimation, "
          f"{after:.4f} after {epochs} epochs")
    architecture = read_json(Path(pruned_dir) / ARCHITECTURE_FILE)
    verified = save_bundle(model, architecture, out_dir, load_split(data_dir, "val").tensors[0][:8])
    if not verified:
        print(f"finetune: warning: {out_dir}/architecture.json did not rebuild this model; use model.pt (dill)")
