"""Ready latency functions for ``KnapsackLabelSelector``: factories returning ``f(model) -> float``.

Each is monotone in the kept channels, which is what the knapsack needs. Models are run under
``torch.no_grad`` in eval mode and each module's train/eval flag is restored afterwards; nothing is moved
between devices, so put the model on the device you measure on.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, Union

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["MACs", "Parameters", "macs", "parameters", "measured_latency"]

Inputs = Union[Sequence[int], torch.Tensor, tuple]


def macs(inputs: Inputs, device: str | torch.device | None = None) -> "MACs":
    """Multiply-accumulates of one forward pass, counted by ``torch.utils.flop_counter`` (MACs = FLOPs / 2).

    ``inputs`` is an input shape such as ``(1, 3, 224, 224)`` (a random tensor is made), a tensor, or a
    tuple of positional inputs, each a tensor or a list, tuple or dict of them (``([image],)`` for a
    torchvision detector, which takes a list of images). ``device``: where to put the inputs; ``None`` means the device of
    the model's first parameter (CPU for a model without parameters). Only the ops the counter knows
    (convolutions, matmuls, attention) are counted, which is where channel pruning saves compute.

    Attention is counted the same way whichever kernel runs it: ``nn.MultiheadAttention``'s fused
    fast path (invisible to the counter) is switched off while counting, and the CPU flash-attention
    kernel gets the counter's formula for scaled dot-product attention. Otherwise an unpruned
    transformer and its pruned version would be measured with different rules. Recurrent layers
    (``nn.RNN``/``LSTM``/``GRU``), whose fused kernels the counter does not see, count their weight
    matrices once per time step and sequence ([`recurrent_macs`][]) instead.
    """
    return MACs(inputs, device)


class MACs:
    """The cost function [`macs`][pruning.latency.macs] returns: ``MACs(inputs)(model)`` counts one forward.

    [`per_layer`][pruning.latency.MACs.per_layer] also says how much of the count each weighted layer
    did, which lets a selector compute the MACs of a width assignment without pruning (a convolution's or
    linear layer's MACs are its weight's size times the positions it is applied at, and channel pruning
    does not change the positions).
    """

    def __init__(self, inputs: Inputs, device: str | torch.device | None = None) -> None:
        self.inputs, self.device = inputs, device

    def __call__(self, model: nn.Module) -> float:
        return self._count(model, None)

    def per_layer(self, model: nn.Module) -> tuple[float, dict[str, float]]:
        """The total, and the MACs counted inside each leaf module that holds a ``weight`` parameter, by
        module name (summed over its calls)."""
        layers: dict[str, float] = {}
        return self._count(model, layers), layers

    def _count(self, model: nn.Module, layers: dict[str, float] | None) -> float:
        args = _as_args(self.inputs, _device(model, self.device))
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with _inference(model), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter, \
                    _recurrent_counted(model, counter) as recurrent, _per_layer(model, counter, layers):
                model(*args)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        return counter.get_total_flops() / 2 + sum(recurrent)


@contextmanager
def _per_layer(model: nn.Module, counter: FlopCounterMode, layers: dict[str, float] | None) -> Iterator[None]:
    """While the model runs, add to ``layers[name]`` the MACs counted inside each call of a leaf module that
    holds a ``weight`` parameter (no hooks for ``layers=None``)."""
    started: list[int] = []
    handles = []
    weighted = [] if layers is None else [
        (name, module) for name, module in model.named_modules()
        if isinstance(module._parameters.get("weight"), nn.Parameter) and not module._modules]
    for name, module in weighted:
        handles.append(module.register_forward_pre_hook(lambda m, args: started.append(counter.get_total_flops())))
        handles.append(module.register_forward_hook(lambda m, args, out, name=name: layers.__setitem__(
            name, layers.get(name, 0.0) + (counter.get_total_flops() - started.pop()) / 2)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def recurrent_macs(module: nn.RNNBase, input: torch.Tensor | nn.utils.rnn.PackedSequence) -> float:
    """MACs of a recurrent layer's matrix products on ``input``: every weight matrix (input, hidden and
    LSTM projection weights of every layer and direction) multiplies one vector per time step and
    sequence."""
    if isinstance(input, nn.utils.rnn.PackedSequence):
        steps = input.data.shape[0]
    else:
        steps = input.shape[0] * (input.shape[1] if input.dim() == 3 else 1)
    return float(steps * sum(p.shape[0] * p.shape[1] for name, p in module.named_parameters() if name.startswith("weight_")))


@contextmanager
def _recurrent_counted(model: nn.Module, counter: FlopCounterMode) -> Iterator[list[float]]:
    """While the model runs: for each recurrent layer call, the MACs of [`recurrent_macs`][] less
    whatever the counter saw inside it (its kernels differ by device and backend)."""
    corrections: list[float] = []
    started: list[int] = []
    handles = []
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            handles.append(module.register_forward_pre_hook(lambda m, args: started.append(counter.get_total_flops())))
            handles.append(module.register_forward_hook(lambda m, args, out: corrections.append(
                recurrent_macs(m, args[0]) - (counter.get_total_flops() - started.pop()) / 2)))
    try:
        yield corrections
    finally:
        for handle in handles:
            handle.remove()


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}


def parameters() -> "Parameters":
    """Number of parameter elements of the model (shared parameters counted once)."""
    return Parameters()


class Parameters:
    """The cost function [`parameters`][pruning.latency.parameters] returns."""

    def __call__(self, model: nn.Module) -> float:
        return float(sum(p.numel() for p in model.parameters()))


def measured_latency(
    inputs: Inputs,
    device: str | torch.device | None = None,
    warmup: int = 3,
    repeats: int = 10,
) -> Callable[[nn.Module], float]:
    """Median wall-clock milliseconds of one forward pass over ``repeats`` runs after ``warmup`` runs.

    ``inputs`` and ``device`` as in [`macs`][]. On CUDA every run is bracketed by
    ``torch.cuda.synchronize`` so the time covers the kernels, not just their launch. The median resists
    the outliers of a noisy machine; raise ``repeats`` when differences between candidates are small.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup!r}, repeats={repeats!r}")

    def measure(model: nn.Module) -> float:
        target = _device(model, device)
        args = _as_args(inputs, target)
        sync = torch.cuda.synchronize if target.type == "cuda" else (lambda: None)
        times = []
        with _inference(model):
            for run in range(warmup + repeats):
                sync()
                started = time.perf_counter()
                model(*args)
                sync()
                if run >= warmup:
                    times.append((time.perf_counter() - started) * 1000.0)
        return statistics.median(times)

    return measure


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no_grad for the block, restoring every module's own training flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in flags:
            module.training = training


def _device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _as_args(inputs: Inputs, device: torch.device) -> tuple:
    if isinstance(inputs, torch.Tensor):
        return (inputs.to(device),)
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(x, torch.Tensor) for x in inputs):
        return tuple(x.to(device) for x in inputs)
    if isinstance(inputs, tuple) and inputs and all(pytree.tree_leaves(x) for x in inputs) and all(
            isinstance(leaf, torch.Tensor) for leaf in pytree.tree_leaves(inputs)):  # an input list of images...
        return pytree.tree_map_only(torch.Tensor, lambda x: x.to(device), inputs)
    if isinstance(inputs, (tuple, list, torch.Size)) and inputs and all(isinstance(x, int) for x in inputs):
        return (torch.randn(*inputs, device=device),)
    raise ValueError(
        f"inputs must be a shape such as (1, 3, 224, 224), a tensor or a tuple of positional inputs (tensors, or "
        f"lists, tuples or dicts of tensors), got {inputs!r}"
    )
