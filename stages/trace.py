"""Stage `trace`: the baseline model as a `PruningIR`, analysed with one validation batch, saved with dill."""

from __future__ import annotations

from pathlib import Path

from pruning import PruningIR
from stages.artifacts import load_state_dict, save_pickled
from stages.data import load_split, make_loader, read_meta
from stages.errors import StageError
from stages.models import build_from_spec, model_spec
from stages.params import Params
from stages.training import setup


def run(params: Params, data_dir: Path, baseline_path: Path, out_path: Path) -> None:
    """Rebuild the baseline from params.yaml + its weights, trace it on CPU in eval mode, save the IR."""
    seed, _ = setup(params)
    batch_size = params.get_int("data.batch_size", min=1)
    soft_tracing = params.get_bool("trace.soft_tracing")
    model = build_from_spec(model_spec(params, read_meta(data_dir)))
    try:
        model.load_state_dict(load_state_dict(baseline_path))
    except RuntimeError as exc:
        raise StageError(f"{baseline_path}: does not fit 'model.name' in params.yaml (rerun train): {exc}") from None
    example, _ = next(iter(make_loader(load_split(data_dir, "val"), batch_size, shuffle=False, seed=seed)))
    ir = PruningIR(model.eval(), soft_tracing=soft_tracing, example_input=example)
    snapshot = ir.snapshot("main")
    if not snapshot.labels:
        raise StageError(f"trace: '{params.get_str('model.name')}' has no prunable channels")
    print(f"trace: {snapshot.num_labels} labels, {len(snapshot.labels)} prunable in {len(snapshot.groups)} groups")
    if snapshot.opaque_ops:
        print(f"trace: {len(snapshot.opaque_ops)} ops without a rule keep the channels that reach them: "
              f"{', '.join(snapshot.opaque_ops)}")
    save_pickled(ir, out_path)
