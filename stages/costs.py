"""The cost functions `select` and `evaluate` use, by the names params.yaml gives them."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from pruning import latency
from stages.params import Params

COST_FUNCTIONS = {"macs": "MACs", "params": "parameters", "latency": "ms"}


def latency_input(params: Params, sample: torch.Tensor) -> torch.Tensor:
    """A batch of `latency.batch_size` copies of one input sample: the input latency is measured on."""
    batch_size = params.get_int("latency.batch_size", min=1)
    return sample[:1].expand(batch_size, *sample.shape[1:]).contiguous()


def cost_function(name: str, params: Params, example: torch.Tensor, device: torch.device) -> Callable[[nn.Module], float]:
    """`macs` and `params` count (deterministic); `latency` measures median milliseconds on `device`,
    with `latency.warmup`/`latency.repeats`, on a copy of the model moved there."""
    if name == "macs":
        return latency.macs(example[:1])
    if name == "params":
        return latency.parameters()
    measure = latency.measured_latency(
        latency_input(params, example),
        device,
        warmup=params.get_int("latency.warmup", min=0),
        repeats=params.get_int("latency.repeats", min=1),
    )

    def on_device(model: nn.Module) -> float:
        first = next(model.parameters(), None)
        if first is not None and first.device != device:
            model = copy.deepcopy(model).to(device)
        return measure(model)

    return on_device
