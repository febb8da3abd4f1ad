"""Model factory (built-in residual CNN, torchvision names, `package.module:factory` callables) and the
plain-JSON architecture description from which a pruned model is rebuilt without unpickling code."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pruning.replay import replay
from stages.errors import StageError
from stages.params import Params

BUILTIN = "digits_resnet"
ARCHITECTURE_FORMAT = "pruning-architecture/2"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """A small residual CNN for small images (8x8 digits): stem, three blocks, global pooling, linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.layer3 = BasicBlock(2 * width, 2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _import_factory(name: str) -> Callable[..., nn.Module]:
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise StageError(f"params.yaml: 'model.name' = '{name}' cannot be imported ({exc})") from None
    if not callable(factory):
        raise StageError(f"params.yaml: 'model.name' = '{name}' is not callable")
    return factory


def build_model(name: str, kwargs: dict[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    """Instantiate the model named in params.yaml.

    `digits_resnet` gets `in_channels`/`num_classes`; a torchvision name gets `num_classes` (its inputs must
    have 3 channels); a `package.module:factory` callable gets only `kwargs`.
    """
    if name == BUILTIN:
        model = DigitsResNet(in_channels=in_channels, num_classes=num_classes, **kwargs)
    elif ":" in name:
        model = _import_factory(name)(**kwargs)
    else:
        import torchvision

        if name not in torchvision.models.list_models():
            raise StageError(
                f"params.yaml: 'model.name' = '{name}' is not '{BUILTIN}', a torchvision model name "
                "or a 'package.module:factory' callable"
            )
        if in_channels != 3:
            raise StageError(
                f"params.yaml: torchvision model '{name}' needs 3-channel images, the data has {in_channels} "
                "(use an ImageFolder with 'data.grayscale: false' or a custom factory)"
            )
        model = torchvision.models.get_model(name, num_classes=num_classes, **kwargs)
    if not isinstance(model, nn.Module):
        raise StageError(f"params.yaml: 'model.name' = '{name}' returned a {type(model).__name__}, not an nn.Module")
    return model


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a weights-only checkpoint (a state_dict, or a dict with a 'state_dict' entry) into `model`."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise StageError(f"params.yaml: 'model.checkpoint' = '{path}' does not exist") from None
    except Exception as exc:
        raise StageError(f"params.yaml: 'model.checkpoint' = '{path}' is not a weights-only state_dict ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise StageError(f"params.yaml: 'model.checkpoint' = '{path}' does not fit 'model.name': {exc}") from None


def describe_architecture(spec: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """A JSON-able description of a pruned model: the factory spec of the unpruned model and the
    pruning record (`pruning.replay.pruning_record`) that turns it into the pruned one."""
    return {"format": ARCHITECTURE_FORMAT, "model": spec, "pruning": record}


def rebuild_model(architecture: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a pruned model from `describe_architecture` output and a weights-only state_dict.

    Builds the unpruned architecture from the factory spec, replays the recorded pruning on it (labels are
    numbered deterministically from the traced graph) and loads the weights strictly: no pickled code runs.
    """
    if architecture.get("format") != ARCHITECTURE_FORMAT:
        raise StageError(f"architecture description has format {architecture.get('format')!r}, expected {ARCHITECTURE_FORMAT!r}")
    try:
        return replay(build_from_spec(architecture["model"]).eval(), architecture["pruning"], state_dict)
    except (RuntimeError, ValueError) as exc:
        raise StageError(f"the weights and pruning record do not rebuild the model: {exc}") from None


def model_spec(params: Params, meta: dict[str, Any]) -> dict[str, Any]:
    """What `build_model` needs, from params.yaml (`model.*`) and the prepared data's `meta.json`."""
    return {
        "name": params.get_str("model.name"),
        "kwargs": params.get_mapping("model.kwargs"),
        "in_channels": int(meta["in_channels"]),
        "num_classes": len(meta["classes"]),
    }


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """`build_model` with the arguments of a `model_spec`."""
    return build_model(spec["name"], spec["kwargs"], spec["in_channels"], spec["num_classes"])
