"""PruningIR's contract: labels, checks, snapshots, inplace, serialisation, errors."""
from __future__ import annotations

import io
import warnings

import dill
import pytest
import torch
from torch import nn

from pruning import PruningIR, TracingError
from pruning.verify import perturb

from models import Concat, Grouped, Residual


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(2, 3, 12, 12)


def half(snapshot):
    return [label for group in snapshot.groups for label in group[: len(group) // 2]]


def test_labels_and_groups_cover_prunable_channels(x):
    ir = PruningIR(Residual(), example_input=x)
    s = ir.snapshot()
    grouped = sorted(label for group in s.groups for label in group)
    assert grouped == s.labels
    # Residual stream (16) + inner conv (24) are prunable; the head's 10 outputs reach the output.
    assert len(s.labels) == 16 + 24
    for site in s.param_sites:
        tensor = dict(s.model.named_parameters()) | dict(s.model.named_buffers())
        assert len(site.label_index) == tensor[site.name].shape[site.dim]


def test_label_knows_its_slices(x):
    s = PruningIR(Residual(), example_input=x).snapshot()
    inner = next(site for site in s.param_sites if site.name == "a.0.weight" and site.dim == 0)
    label = s.label(inner.label_index[3])
    owned = s.slices(label)
    assert owned["a.0.weight"] == [(0, owned["a.0.weight"][0][1])]
    assert owned["a.0.weight"][0][1].tolist() == [3]
    assert set(owned) == {"a.0.weight", "a.1.weight", "a.1.bias", "a.1.running_mean",
                          "a.1.running_var", "b.0.weight"}
    assert owned["b.0.weight"][0][0] == 1


def test_input_and_output_channels_are_unprunable(x):
    s = PruningIR(Residual(), example_input=x).snapshot()
    head = next(site for site in s.param_sites if site.name == "head.weight" and site.dim == 0)
    stem = next(site for site in s.param_sites if site.name == "stem.0.weight" and site.dim == 1)
    prunable = {label.index for label in s.labels}
    assert not prunable & set(head.label_index.tolist())
    assert not prunable & set(stem.label_index.tolist())


def test_module_attributes_follow_the_weights(x):
    ir = PruningIR(Grouped(), example_input=x)
    pruned = ir.prune(labels=half(ir.snapshot())).model
    for module in pruned.modules():
        if isinstance(module, nn.Conv2d):
            assert module.out_channels == module.weight.shape[0]
            assert module.in_channels == module.weight.shape[1] * module.groups
            assert module.out_channels % module.groups == 0
        if isinstance(module, nn.BatchNorm2d):
            assert module.num_features == module.weight.shape[0] == module.running_mean.shape[0]
        if isinstance(module, nn.GroupNorm):
            assert module.num_channels == module.weight.shape[0]
            assert module.num_channels % module.num_groups == 0
        if isinstance(module, nn.Linear):
            assert (module.out_features, module.in_features) == tuple(module.weight.shape)
    assert pruned(x).shape == (2, 10)


def test_input_model_untouched_unless_inplace(x):
    model = Residual()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ir = PruningIR(model, example_input=x)
    ir.prune(labels=half(ir.snapshot()))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    old_labels = half(ir.snapshot())
    assert ir.prune(labels=old_labels, inplace=True) is ir
    assert model.a[0].weight.shape[0] < 24
    assert ir.model(x).shape == (2, 10)
    with pytest.raises(ValueError, match="another PruningIR"):
        ir.prune(labels=old_labels[:1])


def test_empty_selection_returns_a_copy(x):
    model = Residual()
    ir = PruningIR(model, example_input=x)
    copy = ir.prune(labels=[])
    assert copy is not ir and copy.model is not ir.model
    assert copy.model.get_submodule("a.0").weight is not model.a[0].weight
    assert torch.equal(copy.model(x), model(x))


def test_label_checks(x):
    ir = PruningIR(Residual(), example_input=x)
    s = ir.snapshot()
    other = PruningIR(Concat(), example_input=x).snapshot()
    with pytest.raises(ValueError, match="another PruningIR"):
        ir.prune(labels=other.labels[:1])
    with pytest.raises(ValueError, match="twice"):
        ir.prune(labels=[s.labels[0], s.labels[0]])
    unprunable = next(i for i in range(s.num_labels) if not s.analysis.prunable[i])
    with pytest.raises(ValueError, match="unprunable"):
        ir.prune(labels=[s.label(unprunable)])
    with pytest.raises(ValueError, match="keep at least one"):
        ir.prune(labels=s.groups[0])
    from pruning import Label

    with pytest.raises(ValueError, match="belongs to snapshot 'other'"):
        ir.prune(labels=[Label(ir.uid, "other", s.labels[0].index)])
    state = {k: v.clone() for k, v in ir.model.state_dict().items()}
    with pytest.raises(ValueError):
        ir.prune(labels=[s.labels[0], s.labels[0]], inplace=True)
    assert all(torch.equal(state[k], v) for k, v in ir.model.state_dict().items())  # untouched
    with pytest.raises(KeyError, match="no snapshot 'other'"):
        ir.prune("other", labels=[])
    with pytest.raises(TypeError, match="Label"):
        ir.prune(labels=[0])
    pruned = ir.prune(labels=s.labels[:1])
    with pytest.raises(ValueError, match="another PruningIR"):
        pruned.prune(labels=s.labels[1:2])


def test_iterative_pruning(x):
    ir = PruningIR(Residual(), example_input=x)
    once = ir.prune(labels=half(ir.snapshot()))
    twice = once.prune(labels=half(once.snapshot()))
    assert len(twice.snapshot().labels) < len(once.snapshot().labels) < len(ir.snapshot().labels)
    assert twice.model(x).shape == (2, 10)


def test_dill_round_trip_prunes_identically(x, tmp_path):
    model = perturb(Concat().eval())
    ir = PruningIR(model, example_input=x)
    path = tmp_path / "ir.pt"
    torch.save(ir, path, pickle_module=dill)
    loaded = torch.load(path, pickle_module=dill, weights_only=False)
    labels = half(ir.snapshot())
    same = [loaded.snapshot().label(label.index) for label in labels]
    a, b = ir.prune(labels=labels).model, loaded.prune(labels=same).model
    assert torch.equal(a(x), b(x))
    assert [t.shape for t in a.parameters()] == [t.shape for t in b.parameters()]


def test_lazy_analysis_from_first_forward(x):
    ir = PruningIR(Residual())
    with pytest.raises(RuntimeError, match="example_input"):
        ir.snapshot().labels
    out = ir.snapshot().run(x)
    assert out.shape == (2, 10) and ir.snapshot().labels


def test_deterministic_labels(x):
    torch.manual_seed(1)
    model = Concat()
    a = PruningIR(model, example_input=x).snapshot()
    b = PruningIR(model, example_input=x).snapshot()
    assert a.ir_uid == b.ir_uid
    assert [g.tolist() for g in a.analysis.groups] == [g.tolist() for g in b.analysis.groups]


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


class WithBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(8, 6, 3)
        self.odd = DataDependent()
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.head(self.odd(self.conv2(torch.relu(self.conv1(x)))))


def test_soft_tracing_makes_untraceable_modules_leaves(x):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = PruningIR(WithBranch(), example_input=x).snapshot()
    assert any("'odd'" in str(w.message) for w in caught)
    # conv1's channels stay prunable; conv2's output goes into the opaque leaf and does not.
    owners = {site.name: set(site.label_index.tolist()) for site in s.param_sites if site.dim == 0}
    prunable = {label.index for label in s.labels}
    assert owners["conv1.weight"] <= prunable
    assert not owners["conv2.weight"] & prunable
    with pytest.raises(TracingError, match="'odd'.*DataDependent"):
        PruningIR(WithBranch(), soft_tracing=False)


class CumulativeHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.conv, self.head = nn.Conv2d(3, 5, 1), nn.Conv2d(5, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv(torch.relu(self.stem(x)))
        return self.head(torch.cumsum(y, dim=1))  # a running sum over the channels mixes them


def test_the_analysis_names_the_op_that_fixed_each_unprunable_label(x):
    """What the coverage tables' reason column reads: per label, the op whose rule first fixed it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        branch = PruningIR(WithBranch(), example_input=x).snapshot().analysis
    cumulative = PruningIR(nn.Sequential(CumulativeHead()), example_input=x).snapshot().analysis

    def causes(analysis, name):
        site = next(site for site in analysis.sites if site.name == name and site.dim == 0)
        return {analysis.blockers[k] if k >= 0 else None for k in analysis.blocked_by[site.label_index]}

    assert [c.rsplit(".", 1)[-1] for c in causes(branch, "conv2.weight")] == ["DataDependent"]  # the opaque leaf
    assert causes(branch, "head.weight") == causes(cumulative, "0.head.weight") == {"model output"}
    assert causes(branch, "conv1.weight") == {None}  # prunable
    assert causes(cumulative, "0.conv.weight") == {"torch.cumsum in CumulativeHead"}  # in a submodule's forward


class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_soft_tracing_makes_untraceable_functions_leaves(x):
    from models import Outer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ir = PruningIR(Outer(), example_input=x)
    assert any("data_dependent_scale" in str(w.message) for w in caught)
    assert any(n.op == "call_function" and n.target.__name__ == "data_dependent_scale"
               for n in ir.model.graph.nodes)
    s = ir.snapshot()
    owners = {site.name: set(site.label_index.tolist()) for site in s.param_sites if site.dim == 0}
    prunable = {label.index for label in s.labels}
    assert owners["inner.conv1.weight"] <= prunable  # the module around the function stays traced
    assert not owners["inner.conv2.weight"] & prunable
    pruned = ir.prune(labels=s.labels[:3])
    assert pruned.model(x).shape == (2, 4, 12, 12)


@pytest.mark.parametrize("by_type", [False, True])
def test_leaf_modules_are_opaque(x, by_type):
    model = Concat()
    model.b = Wrapper(model.b)
    leaf = Wrapper if by_type else model.b
    s = PruningIR(model, leaf_modules=[leaf], example_input=x).snapshot()
    owners = {site.name: set(site.label_index.tolist()) for site in s.param_sites if site.dim == 0}
    prunable = {label.index for label in s.labels}
    assert owners["c.0.weight"] <= prunable
    assert not owners["a.0.weight"] & prunable
    assert not any(name.startswith("b.") for name in owners)  # a leaf's parameters stay whole


def test_bad_inputs(x):
    with pytest.raises(TypeError, match="nn.Module"):
        PruningIR("resnet")
    with pytest.raises(ValueError, match="cannot run on the example input"):
        PruningIR(Residual(), example_input=torch.randn(2, 5, 12, 12))
    with pytest.raises(ValueError, match="no prunable channel"):
        PruningIR(nn.Sequential(nn.Linear(4, 4)), example_input=torch.randn(1, 4))


class Annotated(nn.Module):
    """Its forward's annotations are strings: this file uses ``from __future__ import annotations``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_string_annotations_do_not_reach_the_generated_code():
    """Postponed (string) annotations leave no string globals in the generated code, so the IR pickles on
    every supported torch (2.11 failed on them)."""
    ir = PruningIR(Annotated())
    assert Annotated.forward.__annotations__["x"] == "torch.Tensor"
    assert not any(isinstance(node.type, str) for node in ir.model.graph.nodes)
    assert not any(isinstance(value, str) for value in ir.model.graph.python_code("self").globals.values())


class TiedEmbedding(nn.Module):
    """A language-model head that reuses the embedding matrix (weight tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 16)
        self.mid = nn.Linear(16, 16)
        self.out = nn.Linear(16, 30, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens):
        return self.out(torch.relu(self.mid(self.embed(tokens))))


@pytest.mark.parametrize("inplace", [False, True])
def test_tied_parameter_dims_are_pruned_together(inplace):
    # embed.weight[:, j] feeds mid's input j and is also out's weight for mid's output j: the two are
    # one tensor, so they make one label. Pruned per name, any two selections disagreeing would slice
    # the shared tensor for one use and leave the other misaligned.
    torch.manual_seed(0)
    model = perturb(TiedEmbedding().eval())
    tokens = torch.randint(0, 30, (2, 7))
    ir = PruningIR(model, example_input=tokens)
    (group,) = ir.snapshot().groups
    assert {name for name in ir.snapshot().slices(group[0])} == {"embed.weight", "mid.weight", "mid.bias"}
    drop = [group[i] for i in (0, 5, 9)]
    keep = [j for j in range(16) if j not in (0, 5, 9)]
    w, mw, mb = (t.detach().clone() for t in (model.embed.weight, model.mid.weight, model.mid.bias))
    pruned = ir.prune(labels=drop, inplace=inplace).model
    assert pruned.embed.weight is pruned.out.weight and pruned.embed.weight.shape == (30, 13)
    assert pruned.out.in_features == pruned.mid.out_features == 13
    h = torch.relu(torch.nn.functional.linear(w[tokens][..., keep], mw[keep][:, keep], mb[keep]))
    torch.testing.assert_close(pruned(tokens), h @ w[:, keep].T)


def unknown_gate(x):
    return x * torch.sigmoid(x)


torch.fx.wrap("unknown_gate")


class HasOpaqueOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.b(unknown_gate(self.a(x)))))


def test_ops_without_a_rule_are_named():
    s = PruningIR(HasOpaqueOp(), example_input=torch.randn(1, 3, 4, 4)).snapshot()
    assert s.opaque_ops == [f"unknown_gate ({__name__}.unknown_gate)"]
    assert [sorted(s.slices(g[0])) for g in s.groups] == [["b.bias", "b.weight", "head.weight"]]
    assert PruningIR(Residual(), example_input=torch.randn(1, 3, 8, 8)).snapshot().opaque_ops == []


def test_no_prunable_channel_error_names_the_ops_without_a_rule():
    class OnlyOpaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            return unknown_gate(self.a(x)).sum()

    with pytest.raises(ValueError, match=r"ops no rule understands here: unknown_gate \(.*unknown_gate\)"):
        PruningIR(OnlyOpaque(), example_input=torch.randn(1, 3, 4, 4))


def test_layers_without_a_rule_are_named_even_when_fed_by_the_input():
    # A parametrized conv is a class of its own with no rule: its output channels stay, although no
    # prunable channel reaches it.
    from torch.nn.utils.parametrizations import weight_norm

    model = nn.Sequential(weight_norm(nn.Conv2d(3, 8, 3)), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Conv2d(6, 2, 1))
    s = PruningIR(model.eval(), example_input=torch.randn(1, 3, 9, 9)).snapshot()
    assert s.opaque_ops == ["_0 (torch.nn.utils.parametrize.ParametrizedConv2d)"]
    assert [sorted(s.slices(g[0])) for g in s.groups] == [["2.bias", "2.weight", "4.weight"]]


class CachesInForward(nn.Module):
    """Caches a tensor on itself on its first call, as relative-position and mask caches do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
        self.cache = None

    def forward(self, x):
        if self.cache is None:
            self.cache = torch.ones(x.shape[-1])
        return self.head(torch.relu(self.conv(x)) * self.cache)


def test_building_an_ir_leaves_the_models_attributes_as_they_were():
    # Tracing stored an fx Proxy and the shape pass a fake tensor in `cache`; the model then failed
    # on its next real call.
    model, x = CachesInForward().eval(), torch.randn(1, 3, 4, 4)
    before = dict(model.__dict__)
    ir = PruningIR(model, example_input=x)
    assert model.cache is None and model.__dict__.keys() == before.keys()
    torch.testing.assert_close(model(x), CachesInForward.forward(model, x))
    assert ir.prune(labels=ir.snapshot().groups[0][:2]).model(x).shape == (1, 2, 4, 4)


class CachesInADict(nn.Module):
    """Derives a bias from a parameter and caches it in a dict keyed by device in eval mode, as timm's LeViT and
    EfficientFormer cache their attention biases."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 4)
        self.table = nn.Parameter(torch.randn(16))
        self.cache: dict[str, torch.Tensor] = {}

    def bias(self, device: torch.device) -> torch.Tensor:
        if self.training:
            return self.table * 2
        key = str(device)
        if key not in self.cache:
            self.cache[key] = self.table * 2
        return self.cache[key]

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x) + self.bias(x.device)))


def test_a_model_that_cached_in_a_dict_traces_again_and_keeps_its_cache():
    # Tracing left a Proxy in the dict under str(proxy) ("Proxy(getattr_1)"); the next trace's device node has the
    # same name, found it, and built a graph reading a node of the earlier graph ("KeyError: getitem...").
    from pruning import MagnitudeCriterion
    from pruning.verify import equivalence_error

    torch.manual_seed(0)
    model, x = perturb(CachesInADict()).eval(), torch.randn(2, 6)
    with torch.no_grad():
        expected = model(x)  # what a user does first: fills the cache
    cached = model.cache["cpu"]
    lazy = PruningIR(model)
    with MagnitudeCriterion(lazy) as collector:
        collector(x)
    ir = PruningIR(model, example_input=x)
    assert list(model.cache) == ["cpu"] and model.cache["cpu"] is cached
    torch.testing.assert_close(lazy.model(x), expected)
    s = ir.snapshot()
    assert len(s.labels) == 16 and "table" in s.slices(s.labels[0])  # the graph derives the bias from the parameter
    assert equivalence_error(ir, half(s), x) < 1e-6


def test_uninitialized_lazy_modules_are_refused_with_the_fix():
    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(3))
    with pytest.raises(ValueError, match=r"uninitialized lazy parameters \(0.weight, 0.bias, 2.weight, ...\): run the model once"):
        PruningIR(model, example_input=torch.randn(2, 5))
    model(torch.randn(2, 5))
    assert PruningIR(model, example_input=torch.randn(2, 5)).snapshot().groups


class OptionalMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x, mask=None, double=False):
        h = torch.relu(self.a(x))
        if mask is not None:
            h = h * mask.view(-1, 1)
        if double:
            h = h * 2
        return self.head(h)


def test_optional_arguments_after_the_example_keep_their_defaults():
    # Traced as proxies, `mask is not None` took the masked branch and the model could not run on x alone.
    model, x = OptionalMask().eval(), torch.randn(3, 4)
    ir = PruningIR(model, example_input=x)
    pruned = ir.prune(labels=ir.snapshot().groups[0][:3]).model
    assert pruned(x).shape == (3, 2)
    with pytest.raises(Exception, match="specialized"):
        pruned(x, torch.ones(3))
    masked = PruningIR(model, example_input=(x, torch.ones(3)))  # given inputs are traced as inputs
    out = masked.prune(labels=masked.snapshot().groups[0][:3]).model(x, torch.zeros(3))
    torch.testing.assert_close(out, model.head.bias.expand(3, 2))


class ProbesItsInput(nn.Module):
    """Library code that behaves otherwise while traced: a Proxy answers every ``hasattr``, so the traced
    graph calls a method no tensor has (transformers' jax probe did this)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        y = self.a(x)
        if hasattr(y, "as_jax_array"):
            y = y.as_jax_array()
        return self.b(y)


def test_a_graph_that_fails_where_the_model_runs_is_reported_as_the_trace_s_fault():
    model, x = ProbesItsInput(), torch.randn(3, 4)
    model(x)  # the model itself runs
    with pytest.raises(ValueError, match=r"traced graph of ProbesItsInput fails on the example input .* on which "
                                         r"the model itself runs: AttributeError.*as_jax_array.*behaves otherwise"):
        PruningIR(model, example_input=x)
    with pytest.raises(ValueError, match="the model cannot run on the example input"):  # a bad input stays so
        PruningIR(ProbesItsInput(), example_input=torch.randn(3, 5))
