"""Top-level forwards as libraries write them: wrapped by (*args, **kwargs) decorators, taking **kwargs,
returning a dict-like dataclass (Hugging Face's ModelOutput), slicing buffers by traced sizes and branching
on dtypes. Hugging Face models themselves are tested where transformers is installed."""
from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pruning import PruningIR
from pruning.tracing.tracer import TracingError
from pruning.verify import equivalence_error, perturb


@dataclasses.dataclass
class Output(dict):
    """A dict that is a dataclass, as ``transformers.utils.ModelOutput``: the fields that are set are its items."""

    logits: torch.Tensor
    features: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None})


def tuple_on_request(forward):
    """A decorator like ``transformers.utils.can_return_tuple``: ``(*args, **kwargs)`` around the forward."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        as_tuple = kwargs.pop("as_tuple", False)
        out = forward(self, *args, **kwargs)
        return tuple(out.values()) if as_tuple else out

    return wrapper


class Library(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 4)
        self.register_buffer("ramp", torch.linspace(0, 1, 32), persistent=False)

    @tuple_on_request
    def forward(self, pixels, scale=None, **kwargs):
        if pixels.dtype != self.a.weight.dtype:  # a dtype branch, as Hugging Face's ViT casts its input
            pixels = pixels.to(self.a.weight.dtype)
        y = torch.relu(self.a(pixels))
        y = y + self.ramp[: y.shape[-1]]  # a buffer sliced by a traced size (BERT's position_ids)
        y = self.b(y)
        return Output(logits=self.head(y.mean((2, 3))), features=y)


def _labels(ir):
    return [label for group in ir.snapshot().groups for label in group[::2]]


def test_a_decorated_forward_returning_a_model_output_traces_whole():
    model = perturb(Library().eval())
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no soft-tracing fallback
        ir = PruningIR(model, example_input=x)
    s = ir.snapshot()
    assert s.opaque_ops == []
    assert [n.name for n in s.model.graph.nodes if n.op == "placeholder"] == ["pixels"]
    assert any(n.op == "get_attr" and n.target == "ramp" for n in s.model.graph.nodes)  # not a constant copy
    assert {name.split(".")[0] for name in s.slices(s.groups[0][0])} == {"a", "b"}  # b's output is returned
    assert equivalence_error(ir, _labels(ir), x) < 1e-6
    pruned = ir.prune(labels=_labels(ir)).model
    out = pruned(x)
    assert type(out) is Output and set(out) == {"logits", "features"} and out.logits.shape == (2, 4)
    assert out.features.shape == (2, 6, 8, 8)  # b's channels stay: they are returned


def test_the_pruned_model_round_trips_through_dill_with_its_output_class(tmp_path):
    dill = pytest.importorskip("dill")
    x = torch.randn(2, 3, 8, 8)
    ir = PruningIR(perturb(Library().eval()), example_input=x)
    pruned = ir.prune(labels=_labels(ir)).model
    torch.save(pruned, tmp_path / "m.pt", pickle_module=dill)
    loaded = torch.load(tmp_path / "m.pt", pickle_module=dill, weights_only=False)
    assert type(loaded(x)) is Output
    torch.testing.assert_close(loaded(x).logits, pruned(x).logits, rtol=0, atol=0)


def test_a_dtype_branch_takes_the_examples_way_and_is_guarded():
    ir = PruningIR(Library().eval(), example_input=torch.randn(2, 3, 8, 8))
    pruned = ir.prune(labels=_labels(ir)).model
    with pytest.raises(AssertionError, match=r"condition on tensor sizes or dtypes \(here False\)"):
        pruned(torch.randn(2, 3, 8, 8, dtype=torch.float64))  # the model's code would cast it


def test_a_wrapped_forward_needs_an_example_to_name_its_inputs():
    with pytest.raises(TracingError, match="pass example_input="):
        PruningIR(Library().eval())


class ReturnsAnObject(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return {"y": self.a(x), "cache": object()}


def test_an_output_a_graph_cannot_hold_is_named():
    with pytest.raises(TracingError, match=r"returns a builtins\.object.*use_cache = False"):
        PruningIR(ReturnsAnObject(), example_input=torch.randn(1, 4))


class TakesKwargs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x, **kwargs):
        return self.b(torch.relu(self.a(x)))


def test_a_forward_with_kwargs_takes_the_examples_inputs():
    x = torch.randn(3, 4)
    ir = PruningIR(perturb(TakesKwargs()), example_input=x)
    assert [n.name for n in ir.model.graph.nodes if n.op == "placeholder"] == ["x"]
    assert equivalence_error(ir, _labels(ir), x) < 1e-6


class MakesModules(nn.Module):
    def __init__(self, stateful: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)
        self.stateful = stateful

    def forward(self, x):
        y = nn.ReLU()(self.a(x))  # made on each call, as DistilBERT's classification head does
        return self.b(nn.Linear(6, 6)(y) if self.stateful else y)


def test_a_module_made_inside_forward_is_traced_through():
    x = torch.randn(3, 4)
    ir = PruningIR(perturb(MakesModules()), example_input=x)
    assert ir.snapshot().opaque_ops == [] and len(ir.snapshot().groups) == 1
    assert equivalence_error(ir, _labels(ir), x) < 1e-6


def test_a_module_with_weights_made_inside_forward_is_refused():
    with pytest.raises(TracingError, match="creates a Linear with parameters.*assign it to an attribute"):
        PruningIR(MakesModules(stateful=True), example_input=torch.randn(3, 4))


# Hugging Face models passed as they are (random weights; tiny configs).

def _hf_case(name):
    transformers = pytest.importorskip("transformers")
    text = torch.randint(0, 64, (2, 7))
    if name == "llama":
        config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                          num_attention_heads=4, num_key_value_heads=2, use_cache=False)
        return transformers.LlamaForCausalLM(config), text, (2, 7, 64)
    if name == "distilbert":  # its head makes an nn.ReLU() inside forward
        config = transformers.DistilBertConfig(vocab_size=64, dim=32, hidden_dim=48, n_layers=1, n_heads=4, num_labels=3)
        return transformers.DistilBertForSequenceClassification(config), text, (2, 3)
    if name == "bert":
        config = transformers.BertConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=4, num_labels=3)
        return transformers.BertForSequenceClassification(config), text, (2, 3)
    config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=48,
                                    num_hidden_layers=1, num_attention_heads=4, num_labels=5)
    return transformers.ViTForImageClassification(config), torch.randn(2, 3, 16, 16), (2, 5)


@pytest.mark.parametrize("name", ["llama", "bert", "distilbert", "vit"])
def test_hugging_face_models_prune_as_they_are(name):
    model, x, logits_shape = _hf_case(name)
    model = perturb(model.eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' own deprecation notices
        ir = PruningIR(model, example_input=x)
    s = ir.snapshot()
    assert type(s.model(x)) is type(model(x))
    normalized = s.analysis.normalized
    assert any(all(normalized[label.index] for label in group) for group in s.groups)  # the hidden size
    exact = [label for label in _labels(ir) if not normalized[label.index]]
    assert exact and equivalence_error(ir, exact, x, dtype=torch.float64) < 1e-10
    out = ir.prune(labels=_labels(ir)).model(x)
    assert type(out) is type(model(x)) and out.logits.shape == logits_shape


def test_a_hugging_face_cache_is_named_with_the_fix():
    model, x, _ = _hf_case("llama")
    model.config.use_cache = True
    with pytest.raises(TracingError, match="DynamicCache.*model.config.use_cache = False"):
        PruningIR(model.eval(), example_input=x)


class TiedBiasHead(nn.Module):
    """BERT's LM head: the decoder's bias is the head's own parameter, registered first, and the head itself
    is never called, so the parameter's first name is not a graph target."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(3))
        self.decoder = nn.Linear(6, 3)
        self.decoder.bias = self.bias


class TiedBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(4, 6), TiedBiasHead()

    def forward(self, x):
        return self.head.decoder(torch.relu(self.body(x)))


def test_a_pruned_copy_prunes_again_when_a_tied_tensor_is_named_outside_the_graph():
    x = torch.randn(2, 4)
    ir = PruningIR(perturb(TiedBias()), example_input=x)
    copy = ir.prune(labels=[])
    assert "head.bias" in copy.model.state_dict() and copy.model.head.bias is copy.model.head.decoder.bias
    assert equivalence_error(ir, _labels(ir), x) < 1e-6  # prunes a copy of the IR
    twice = copy.prune(labels=[copy.snapshot().label(label.index) for label in _labels(ir)]).model
    torch.testing.assert_close(twice(x), ir.prune(labels=_labels(ir)).model(x))


class IndexedTable(nn.Module):
    """A learned table gathered by an integer index buffer (timm's LambdaLayer relative positions)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.table = nn.Parameter(torch.randn(7, 3))
        self.register_buffer("index", torch.randint(0, 7, (2, 5)), persistent=False)

    def forward(self, x):  # x: (batch, 5, 4)
        return self.b(torch.relu(self.a(x))) + self.table[self.index[0]]


def test_index_tensors_of_advanced_indexing_are_never_pruned():
    x = torch.randn(2, 5, 4)
    ir = PruningIR(perturb(IndexedTable()), example_input=x)
    s = ir.snapshot()
    assert not any("index" in name for group in s.groups for name in s.slices(group[0]))
    pruned = ir.prune(labels=[label for group in s.groups for label in group[::2]]).model
    assert pruned(x).shape == (2, 5, 3)


class TakesVarargs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x, *extra):
        return self.b(torch.relu(self.a(x + sum(extra))))


def test_a_forward_with_varargs_takes_the_examples_inputs_numbered():
    x = torch.randn(3, 4)
    ir = PruningIR(perturb(TakesVarargs()), example_input=(x, x, x))
    assert [n.name for n in ir.model.graph.nodes if n.op == "placeholder"] == ["x", "input_1", "input_2"]
    assert equivalence_error(ir, _labels(ir), x, x, x) < 1e-6


class OldStyleHeads(nn.Module):
    """Attention heads as older Hugging Face models (PVT) shape them, ``x.size()[:-1] + (heads, head_dim)``, and a
    max-pool written as ``view(...).max(dim=1).values`` added to a residual (Hiera)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.o = nn.Linear(8, 8), nn.Linear(8, 8)
        self.m, self.n = nn.Linear(8, 10), nn.Linear(10, 8)
        self.proj, self.skip, self.head = nn.Linear(8, 6), nn.Linear(8, 6), nn.Linear(6, 2)

    def forward(self, x):  # (batch, 4, 8)
        heads = self.q(x).view(x.size()[:-1] + (2, 4)).permute(0, 2, 1, 3)
        y = self.o(heads.permute(0, 2, 1, 3).reshape(x.shape))
        y = y + self.n(torch.relu(self.m(y)).reshape(x.shape[:-1] + (-1,)))  # -1 adapts: prunable (timm MaxViT)
        pooled = self.proj(y).view(x.shape[0], 2, -1, 6).max(dim=1).values
        return self.head(pooled + self.skip(y)[:, :2])


def test_a_shape_built_at_run_time_and_a_max_values_prune_correctly():
    x = torch.randn(3, 4, 8)
    ir = PruningIR(perturb(OldStyleHeads()), example_input=x)
    s = ir.snapshot()
    assert not any("q.weight" in s.slices(group[0]) for group in s.groups)  # its literals are out of reach
    assert any({"m.weight", "n.weight"} <= set(s.slices(group[0])) for group in s.groups)
    assert any({"proj.weight", "skip.weight"} <= set(s.slices(group[0])) for group in s.groups)
    assert equivalence_error(ir, _labels(ir), x) < 1e-6
    assert ir.prune(labels=_labels(ir)).model(x).shape == (3, 2, 2)


class NumpyScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) * np.sqrt(6))  # a numpy scalar, as CTRL scales its embeddings


def test_a_numpy_scalar_in_the_graph_becomes_a_number():
    x, model = torch.randn(3, 4), perturb(NumpyScale())
    ir = PruningIR(model, example_input=x)
    torch.testing.assert_close(ir.model(x), model(x))  # the generated code named np.float64 (a NameError)
    assert equivalence_error(ir, _labels(ir), x) < 1e-6


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_a_hugging_face_attention_mask_is_a_second_example_input(name):
    model, ids, _ = _hf_case(name)
    model = perturb(model.eval())
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # the second row is padded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ir = PruningIR(model, example_input=(ids, mask))
    assert [n.name for n in ir.model.graph.nodes if n.op == "placeholder"] == ["input_ids", "attention_mask"]
    torch.testing.assert_close(ir.model(ids, mask).logits, model(input_ids=ids, attention_mask=mask).logits)


class RoutedTokens(nn.Module):
    """Tokens split by counts computed from the data, as a mixture of experts routes them (JetMoE)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(3, 2)
        self.w0, self.w1 = nn.Parameter(torch.randn(6, 3)), nn.Parameter(torch.randn(6, 3))

    def forward(self, x):  # (tokens, 4)
        h = torch.relu(self.a(x))
        counts = torch.stack([(x[:, 0] <= 0).sum(), (x[:, 0] > 0).sum()]).tolist()
        first, second = h[x[:, 0].argsort()].split(counts, dim=0)
        return self.b(torch.cat([first @ self.w0, second @ self.w1], dim=0))


def test_a_split_by_counts_computed_at_run_time_keeps_them():
    x = torch.randn(8, 4)
    x[:, 0] = torch.tensor([-1.0, 1, -1, 1, 1, 1, -1, 1])  # 3 / 5 for the example
    ir = PruningIR(perturb(RoutedTokens()), example_input=x)
    other = torch.randn(8, 4)
    other[:, 0] = torch.tensor([1.0, -1, -1, -1, -1, 1, -1, -1])  # 6 / 2: the example's counts would not fit
    assert equivalence_error(ir, _labels(ir), other) < 1e-6
