"""Generated forward code of our GraphModules: repeated submodule paths are looked up once per call, and the
code still computes what the model does."""
import copy
import io

import torch
from torch import fx, nn

from pruning import PruningIR, UniformLabelSelector
from pruning.magnitude import MagnitudeCriterion
from pruning.tracing import trace_model
from pruning.tracing.codegen import ModuleLookups, hoist_module_lookups, hoisted
from stages.models import DigitsResNet


class Pair(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.first = nn.Linear(width, width)
        self.second = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


class Collide(nn.Module):
    """``a.b`` and ``a_b`` are both containers used twice: their locals would both be ``_a_b``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Module()
        self.a.b = Pair(4)
        self.a_b = Pair(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a_b(self.a.b(x))


def test_repeated_containers_are_bound_once_and_outputs_match_eager():
    torch.manual_seed(0)
    model = DigitsResNet().eval()
    x = torch.randn(3, 1, 8, 8)
    traced = trace_model(model)
    body = traced.code.split("\n")
    bindings = next(line for line in body if "_layer1 = self.layer1" in line)
    assert "_layer2_shortcut = _layer2.shortcut" in bindings
    assert "self.layer1.conv1" not in traced.code and "_layer1.conv1(" in traced.code
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


def test_pruned_model_code_is_hoisted_and_survives_pickle_and_deepcopy():
    """torch.load gives back fx's own code (fx re-traces the pickled code); ``hoisted`` restores ours."""
    torch.manual_seed(0)
    model = DigitsResNet().eval()
    x = torch.randn(2, 1, 8, 8)
    ir = PruningIR(model, example_input=x)
    with MagnitudeCriterion(ir) as collector:
        collector(x)
    pruned = ir.prune(labels=UniformLabelSelector(0.5).select(ir), compensate=False).model
    assert "_layer1 = self.layer1" in pruned.code
    buffer = io.BytesIO()
    torch.save(pruned, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert "_layer1 = self.layer1" not in loaded.code  # fx pickles the code and traces it again
    assert hoisted(loaded) is loaded and "_layer1 = self.layer1" in loaded.code
    with torch.no_grad():
        expected = pruned(x)
        assert torch.equal(loaded(x), expected)
        assert torch.equal(copy.deepcopy(pruned)(x), expected)


def test_a_container_replaced_between_calls_is_the_one_used():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Pair(5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(x)

    traced = trace_model(Net())
    assert "_block = self.block" in traced.code
    other = Pair(5)
    traced.block = other
    x = torch.randn(2, 5)
    with torch.no_grad():
        assert torch.equal(traced(x), other(x))


def test_local_names_do_not_collide():
    torch.manual_seed(0)
    model = Collide()
    traced = trace_model(model)
    assert "_a_b = " in traced.code and "_a_b_ = " in traced.code
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


def test_installing_twice_binds_once_and_a_hoisted_model_is_not_recompiled():
    traced = trace_model(DigitsResNet())
    graph = copy.deepcopy(traced.graph)  # the deep copy keeps the transformer
    assert hoist_module_lookups(graph) is False
    code = fx.GraphModule(DigitsResNet(), graph).code
    assert code.count("_layer1 = self.layer1") == 1
    forward = type(traced).forward
    assert hoisted(traced) is traced and type(traced).forward is forward  # no second code generation


def test_paths_inside_string_constants_are_left_alone():
    body = ["# COUNTER: 0\n", "a = self.m.x(y)\n", "# COUNTER: 1\n", "b = self.m.z(a, 'self.m.x', \"it's self.m\")\n"]
    code = "".join(ModuleLookups()(body))
    assert code.startswith("_m = self.m\n")
    assert "a = _m.x(y)" in code and "b = _m.z(a, 'self.m.x', \"it's self.m\")" in code
    last_line = "".join(ModuleLookups()(body[:-1] + ["b = self.m.z(a, 'self.m.x')"]))  # no newline at the end
    assert last_line.endswith("b = _m.z(a, 'self.m.x')")


def test_a_saved_ir_loads_with_hoisted_code_and_the_same_fingerprints():
    import dill

    from pruning.ir import fingerprint

    model = DigitsResNet().eval()
    ir = PruningIR(model, example_input=torch.randn(1, 1, 8, 8))
    loaded = dill.loads(dill.dumps(ir))
    assert "_layer1 = self.layer1" in loaded.model.code
    assert loaded.snapshot().ir_uid == ir.snapshot().ir_uid
    assert fingerprint(loaded.model, values=False) == fingerprint(ir.model, values=False)


def test_torchscript_compiles_the_hoisted_code():
    import warnings

    torch.manual_seed(0)
    model = DigitsResNet().eval()
    x = torch.randn(2, 1, 8, 8)
    traced = trace_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, still used
        scripted = torch.jit.script(traced)
    with torch.no_grad():
        assert torch.equal(scripted(x), model(x))
