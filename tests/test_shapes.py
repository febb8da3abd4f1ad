"""The shape pass: shapes that rules compute without running a module match the real outputs."""
from __future__ import annotations

import copy
import operator

import pytest
import torch
from torch import nn

from pruning import PruningIR
from pruning.registry import rule_for
from pruning.surgery import _copy_module
from pruning.tracing import record_shapes, trace_model

CASES = [
    (nn.Conv1d(4, 6, 3), (2, 4, 17)),
    (nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2), (4, 20)),  # unbatched
    (nn.Conv2d(4, 8, (3, 5), stride=(2, 1), padding=(1, 2)), (1, 4, 15, 16)),
    (nn.Conv2d(4, 8, 3, padding="same", dilation=2, padding_mode="reflect"), (1, 4, 9, 9)),
    (nn.Conv2d(4, 8, 4, padding="valid", stride=3), (2, 4, 14, 11)),
    (nn.Conv2d(6, 6, 3, groups=3, padding=1, padding_mode="circular"), (1, 6, 7, 8)),
    (nn.Conv2d(8, 8, 3, groups=8, stride=2), (1, 8, 10, 10)),
    (nn.Conv3d(2, 3, (1, 3, 3), padding=(0, 1, 1), stride=(1, 2, 2)), (1, 2, 4, 9, 9)),
    (nn.Linear(5, 7), (3, 4, 5)),
    (nn.Linear(5, 7, bias=False), (5,)),
    (nn.AdaptiveAvgPool2d((3, None)), (2, 4, 10, 11)),
    (nn.AdaptiveAvgPool1d(4), (3, 10)),
    (nn.AdaptiveMaxPool3d(2), (1, 2, 6, 6, 6)),
    (nn.BatchNorm2d(4), (2, 4, 5, 5)),
    (nn.LayerNorm(6), (2, 3, 6)),
    (nn.GroupNorm(2, 4), (2, 4, 5)),
    (nn.GELU(), (2, 3)),
    (nn.PReLU(4), (2, 4, 3)),
]


@pytest.mark.parametrize("module,shape", CASES, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_output_shape_matches_the_real_module(module, shape):
    module.eval()
    with torch.no_grad():
        expected = tuple(module(torch.randn(shape)).shape)
    assert rule_for(type(module)).output_shape(module, torch.Size(shape)) == expected


@pytest.mark.parametrize("module,shape", [
    (nn.Conv2d(4, 8, 3), (1, 5, 9, 9)),  # wrong input channels
    (nn.Conv2d(4, 8, 5), (1, 4, 3, 3)),  # kernel larger than the padded input
    (nn.Linear(5, 7), (3, 6)),
    (nn.AdaptiveMaxPool2d(2, return_indices=True), (1, 2, 6, 6)),  # returns a tuple
])
def test_output_shape_declines_inputs_it_does_not_model(module, shape):
    assert rule_for(type(module)).output_shape(module, torch.Size(shape)) is None


def test_shape_pass_reports_the_real_error_for_a_bad_input():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 2))
    with pytest.raises(ValueError, match="cannot run on the example input"):
        PruningIR(model, example_input=torch.randn(1, 4, 8, 8))


def test_shape_pass_reports_a_dtype_mismatch():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).double()
    with pytest.raises(ValueError, match="cannot run on the example input"):
        PruningIR(model, example_input=torch.randn(1, 3, 8, 8))


def test_modules_with_hooks_run_in_the_shape_pass_and_stay_opaque():
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3), nn.Conv2d(6, 8, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    model[2].register_forward_hook(lambda module, args, out: out[:, :4])  # keeps 4 of 8 channels
    x = torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match="'2' .*forward hooks"):
        ir = PruningIR(model, example_input=x)
    shapes = [n.meta["pruning_shape"] for n in ir.model.graph.nodes if n.op == "call_module"]
    assert shapes[2] == (1, 4, 4, 4)
    # only conv 0's channels are prunable: conv 1's enter the hooked conv, whose inputs are blocked
    labels = ir.snapshot().labels
    assert len(labels) == 6
    pruned = ir.prune(labels=labels[:2]).model
    convs = [pruned.get_submodule(str(i)) for i in range(3)]
    assert [c.out_channels for c in convs] == [4, 6, 8] and convs[1].in_channels == 4
    assert pruned(x).shape == (1, 2)


def test_recorded_shapes_equal_a_real_forward():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, groups=8), nn.AdaptiveAvgPool2d((2, 3)), nn.Flatten(),
                          nn.Linear(48, 5)).eval()
    graph_module = trace_model(model)
    x = torch.randn(2, 3, 17, 15)
    record_shapes(graph_module, (x,), {})
    real: dict[str, torch.Size] = {}
    out = x
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            out = graph_module.get_submodule(node.target)(out)
            real[node.name] = out.shape
    assert {n.name: n.meta["pruning_shape"] for n in graph_module.graph.nodes if n.op == "call_module"} == real


class _WithState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.table = {"scale": [1.0, 2.0]}
        self.register_buffer("steps", torch.zeros(()))
        self.register_forward_hook(lambda *args: None)


def test_module_copy_is_a_deep_copy():
    module = _WithState()
    memo: dict = {}
    copied = _copy_module(module, memo)
    reference = copy.deepcopy(module)
    assert type(copied) is _WithState and copied.conv is not module.conv
    assert copied.table == module.table and copied.table is not module.table
    assert copied.table["scale"] is not module.table["scale"]
    assert copied.conv.weight is not module.conv.weight and torch.equal(copied.conv.weight, module.conv.weight)
    assert copied.conv.weight.data_ptr() != module.conv.weight.data_ptr()
    assert len(copied._forward_hooks) == 1 and copied._forward_hooks is not module._forward_hooks
    assert set(copied.state_dict()) == set(reference.state_dict())
    copied.conv.out_channels = 3
    assert module.conv.out_channels == 4


class _DataDependent(nn.Module):
    """``nonzero`` has no fake-tensor kernel for its data-dependent size: the pass must run for real."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.conv2(torch.relu(self.conv1(x)))
        return h + torch.nonzero(h > 1e9).numel()


def test_shape_pass_falls_back_to_a_real_run():
    model = _DataDependent().eval()
    x = torch.randn(2, 3, 9, 9)
    ir = PruningIR(model, example_input=x)
    shapes = {n.name: n.meta["pruning_shape"] for n in ir.model.graph.nodes}
    assert shapes["conv1"] == (2, 8, 7, 7) and shapes["conv2"] == (2, 4, 7, 7)
    assert len(ir.snapshot().labels) == 8  # conv1's channels; conv2's reach the data-dependent op
    pruned = ir.prune(labels=ir.snapshot().labels[:3]).model
    assert pruned.conv1.out_channels == 5 and pruned(x).shape == (2, 4, 7, 7)


ELEMENTWISE_CASES = [
    (operator.add, ((2, 4, 5, 5), (2, 4, 5, 5))),
    (operator.mul, ((2, 4, 5, 5), (2, 4, 1, 1))),  # squeeze-excitation scale
    (torch.sub, ((4, 1, 3), (5, 1))),
    (operator.truediv, ((2, 3), 2)),
    ("add", ((3, 4), (4,))),
    ("mul_", ((3, 4), (1, 4))),
    (operator.iadd, ((2, 3), (2, 3))),
]


def _stand_in(spec):
    return torch.randn(spec) if isinstance(spec, tuple) else spec


@pytest.mark.parametrize("target,specs", ELEMENTWISE_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_call_shape_matches_the_real_op(target, specs):
    args = [_stand_in(spec) for spec in specs]
    rule = rule_for(target)
    run = (lambda *a: getattr(a[0], target)(*a[1:])) if isinstance(target, str) else target
    assert rule.call_shape(target, tuple(args), {}) == tuple(run(*args).shape)


@pytest.mark.parametrize("target,args", [
    (operator.add, (torch.randn(2, 3), torch.randn(4, 3))),  # does not broadcast
    ("add_", (torch.randn(1, 3), torch.randn(4, 3))),  # in place would have to grow its target
    (operator.truediv, (torch.ones(2, 3, dtype=torch.int64), 2)),  # int / int gives floats
    (torch.where, (torch.ones(2, dtype=torch.bool), torch.randn(2), torch.randn(2))),
    (operator.mul, (torch.randn(2), True)),
])
def test_call_shape_declines_what_it_does_not_model(target, args):
    rule = rule_for(target)
    assert rule.call_shape(target, args, {}) is None


class _Gate(nn.Module):
    def forward(self, x, s):
        return x * torch.sigmoid(s) + x.mean(dim=(2, 3), keepdim=True) - 1


def test_shape_pass_with_call_shapes_records_real_shapes():
    model, x, s = _Gate(), torch.randn(2, 4, 6, 6), torch.randn(2, 4, 1, 1)
    graph_module = trace_model(model)
    record_shapes(graph_module, (x, s), {})
    env = {}
    for node in graph_module.graph.nodes:  # a real run, node by node
        if node.op == "placeholder":
            env[node] = {"x": x, "s": s}[node.target]
        elif node.op != "output":
            args = torch.fx.node.map_arg(node.args, env.__getitem__)
            kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
            env[node] = (node.target(*args, **kwargs) if node.op == "call_function"
                         else getattr(args[0], node.target)(*args[1:], **kwargs))
            assert node.meta["pruning_shape"] == env[node].shape, node.name


def test_in_place_broadcast_error_is_still_raised():
    class Grow(nn.Module):
        def forward(self, x, y):
            return x.add_(y)

    with pytest.raises(ValueError, match="cannot run on the example input"):
        PruningIR(Grow(), example_input=(torch.randn(1, 3), torch.randn(4, 3)))


def test_a_shape_only_value_becomes_one_tensor():
    # Consumers of one value must see one tensor, as in a real run (attention checks query is key).
    from pruning.tracing.shapes import _Shaped

    value = _Shaped((2, 3), torch.float32, torch.device("cpu"))
    assert value.materialize() is value.materialize()
    assert value.materialize().shape == (2, 3)
