"""Stage `prune`: apply the selected labels to the calibrated IR and save the pruned model (dill + safe pair)."""

from __future__ import annotations

from pathlib import Path

from pruning import PruningIR
from pruning.compensation import METHODS
from pruning.replay import pruning_record
from stages.artifacts import load_pickled, read_json
from stages.bundle import save_bundle
from stages.data import load_split, read_meta
from stages.errors import StageError
from stages.models import describe_architecture, model_spec
from stages.params import Params
from stages.training import setup


def run(params: Params, data_dir: Path, ir_path: Path, labels_path: Path, out_dir: Path) -> None:
    """Prune on CPU (``prune.compensate``: true/false or ``mean``/``regression``, as ``ir.prune``'s
    ``compensate``); warns when the model cannot be rebuilt from the plain architecture description."""
    setup(params)
    ir = load_pickled(ir_path, PruningIR)
    selection = read_json(labels_path)
    by_index = {label.index: label for label in ir.snapshot("main").labels}
    unknown = [index for index in selection["labels"] if index not in by_index]
    if unknown:
        raise StageError(f"{labels_path}: label indices {unknown[:5]} are not prunable labels of {ir_path} "
                         "(the files come from different runs: rerun select)")
    labels = [by_index[index] for index in selection["labels"]]
    compensate = params.get("prune.compensate")
    if not isinstance(compensate, bool) and compensate not in METHODS:
        raise StageError(f"params.yaml: 'prune.compensate' must be true, false, 'mean' or 'regression', "
                         f"got {compensate!r}")
    snapshot = ir.snapshot("main")
    if compensate and snapshot.input_means is None:
        raise StageError(f"{ir_path} has no calibration means to compensate with (it was calibrated by an older "
                         "version): rerun calibrate, or set 'prune.compensate: false'")
    if compensate == "regression" and not snapshot.input_covariances:
        raise StageError(f"{ir_path} has no input covariances for 'prune.compensate: regression': set "
                         "'calibrate.input_covariance: true' and rerun calibrate, or set 'prune.compensate: mean'")
    pruned = ir.prune(labels=labels, compensate=compensate)
    check_input = load_split(data_dir, "val").tensors[0][:8]
    architecture = describe_architecture(model_spec(params, read_meta(data_dir)),
                                         pruning_record(ir, labels, compensate=compensate))
    verified = save_bundle(pruned.model, architecture, out_dir, check_input)
    print(f"prune: removed {len(selection['labels'])} labels; weights-only rebuild verified: {verified}")
    if not verified:
        print(f"prune: warning: {out_dir}/architecture.json did not rebuild this model; only the dill file "
              "model.pt (which runs code when loaded) reproduces it")
