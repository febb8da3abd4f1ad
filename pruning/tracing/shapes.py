"""Record the shape of every value in a traced graph with one forward pass."""
from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode


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


#: Modules whose output is a tensor shaped like their input: the shape pass skips running them
#: (fake-tensor batch norm alone would cost most of the pass).
_SHAPE_PRESERVING = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.Dropout, nn.Dropout2d,
    nn.Identity,
)


class _Recorder(fx.Interpreter):
    def __init__(self, module: fx.GraphModule, skip_shape_preserving: bool) -> None:
        super().__init__(module)
        self.skip = skip_shape_preserving

    def call_module(self, target, args, kwargs):
        if self.skip and isinstance(self.fetch_attr(target), _SHAPE_PRESERVING) and len(args) == 1 \
                and not kwargs and isinstance(args[0], torch.Tensor):
            return args[0]
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        n.meta["pruning_shape"] = shape_of(result)
        return result


def record_shapes(graph_module: fx.GraphModule, args: tuple, kwargs: dict) -> None:
    """Run the graph once without gradients and in eval mode, storing shapes in ``node.meta``.

    The pass runs on fake tensors (shapes only, no arithmetic), which makes it nearly free; an op
    without a fake-tensor implementation makes it run again on the real inputs. Eval mode keeps
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
                    _Recorder(graph_module, True).run(*fake)
            except Exception:  # noqa: BLE001 - some op has no fake kernel: measure for real
                _Recorder(graph_module, False).run(*inputs)
    finally:
        for module, mode in modes.items():
            module.training = mode
