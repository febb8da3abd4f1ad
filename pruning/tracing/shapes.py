"""Record the shape of every value in a traced graph with one forward pass."""
from __future__ import annotations

from typing import Any

import torch
from torch import fx
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from ..rules.base import CONSERVATIVE, MODULE_RULES


def shape_of(value: Any) -> Any:
    """``torch.Size`` for a tensor, a list for a tuple/list of values, None otherwise."""
    if isinstance(value, torch.Tensor):
        return value.shape
    if isinstance(value, (tuple, list)):
        return [shape_of(v) for v in value]
    return None


def bind_inputs(graph_module: fx.GraphModule, args: tuple, kwargs: dict) -> tuple:
    """Order positional and keyword inputs as the graph's placeholders expect them."""
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    values, rest = [], list(args)
    for node in placeholders:
        name = str(node.target).lstrip("*")
        if name in kwargs:
            values.append(kwargs[name])
        elif rest:
            values.append(rest.pop(0))
        elif node.args:
            values.append(node.args[0])
        else:
            raise TypeError(f"the model's forward is missing its input '{name}'")
    if rest:
        raise TypeError(f"the model's forward takes {len(placeholders)} inputs, got {len(args)}")
    return tuple(values)


class _Recorder(fx.Interpreter):
    """Runs the graph and stores every node's output shape.

    On fake tensors (``fake=True``) it avoids fake-tensor dispatch where it can, since that dominates
    the pass: a module whose rule knows its output shape (``Rule.output_shape``) is not run, its
    output is an empty fake tensor of that shape; parameters read by ``get_attr`` become empty fake
    tensors instead of being converted one by one.
    """

    def __init__(self, module: fx.GraphModule, fake: bool) -> None:
        super().__init__(module)
        self.fake = fake

    def call_module(self, target, args, kwargs):
        if self.fake and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            module = self.fetch_attr(target)
            x = args[0]
            shape = MODULE_RULES.get(type(module), CONSERVATIVE).output_shape(module, x.shape)
            # A dtype or device mismatch would fail for real: run the module to raise its own error.
            if shape is not None and all(p.dtype == x.dtype and p.device == x.device
                                         for p in module._parameters.values() if p is not None):
                return x if tuple(shape) == tuple(x.shape) else torch.empty(shape, dtype=x.dtype, device=x.device)
        return super().call_module(target, args, kwargs)

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        if self.fake and isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor):
            return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=value.device)
        return value

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        n.meta["pruning_shape"] = shape_of(result)
        return result


def record_shapes(graph_module: fx.GraphModule, args: tuple, kwargs: dict) -> None:
    """Run the graph once without gradients and in eval mode, storing shapes in ``node.meta``.

    The pass runs on fake tensors (shapes only, no arithmetic), skipping modules whose output shape
    their rule computes, which makes it nearly free; an op without a fake-tensor implementation
    makes it run again on the real inputs. Eval mode keeps
    BatchNorm statistics untouched and lets batch-size-1 inputs through; the modes of all modules are
    restored afterwards.
    """
    inputs = bind_inputs(graph_module, args, kwargs)
    modes = {m: m.training for m in graph_module.modules()}
    graph_module.eval()
    try:
        with torch.no_grad():
            try:
                with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                    fake = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                 for a in inputs)
                    _Recorder(graph_module, fake=True).run(*fake)
            except Exception:  # noqa: BLE001 - some op has no fake kernel: measure for real
                _Recorder(graph_module, fake=False).run(*inputs)
    finally:
        for module, mode in modes.items():
            module.training = mode
