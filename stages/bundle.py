"""A saved model in two forms: `model.pt` (the exact module, dill: runs code when loaded) and the safe
pair `state_dict.pt` (weights only) + `architecture.json` (plain JSON: the factory spec and the pruning
record) that rebuilds it without unpickling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.tracing.codegen import hoisted
from stages.artifacts import load_pickled, load_state_dict, read_json, save_pickled, save_state_dict, write_json
from stages.errors import StageError
from stages.models import rebuild_model

MODEL_FILE = "model.pt"
WEIGHTS_FILE = "state_dict.pt"
ARCHITECTURE_FILE = "architecture.json"


@torch.no_grad()
def save_bundle(model: nn.Module, architecture: dict[str, Any], out_dir: str | Path,
                check_input: torch.Tensor) -> bool:
    """Write the three files; returns whether the safe pair rebuilds a model with identical outputs.

    `architecture` comes from `stages.models.describe_architecture`. The check runs on CPU in eval mode
    with `check_input`; its result is stored as `rebuild_verified`.
    """
    out_dir = Path(out_dir)
    model = model.cpu().eval()
    state = model.state_dict()
    architecture = {key: value for key, value in architecture.items() if key != "rebuild_verified"}
    try:
        rebuilt = rebuild_model(architecture, state).eval()
        verified = bool(torch.allclose(rebuilt(check_input), model(check_input), rtol=1e-5, atol=1e-6))
    except (StageError, RuntimeError, TypeError, ValueError):
        verified = False
    architecture["rebuild_verified"] = verified
    save_pickled(model, out_dir / MODEL_FILE)
    save_state_dict(state, out_dir / WEIGHTS_FILE)
    write_json(architecture, out_dir / ARCHITECTURE_FILE)
    return verified


def load_bundle(out_dir: str | Path, *, safe: bool = False) -> nn.Module:
    """The saved model: the exact dill module, or (`safe=True`) the rebuild that runs no pickled code."""
    out_dir = Path(out_dir)
    if not safe:
        return hoisted(load_pickled(out_dir / MODEL_FILE, nn.Module))  # unpickling restored fx's own code
    architecture = read_json(out_dir / ARCHITECTURE_FILE)
    if not architecture.get("rebuild_verified", False):
        raise StageError(f"{out_dir}: {ARCHITECTURE_FILE} and {WEIGHTS_FILE} did not rebuild this model when it was "
                         f"saved; load {MODEL_FILE} instead, which runs pickled code")
    return rebuild_model(architecture, load_state_dict(out_dir / WEIGHTS_FILE))
