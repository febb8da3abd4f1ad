"""Tensor factories, dtype limits, item assignment and transposed weights as decoders write them:
``torch.ones`` given traced sizes one by one (OPT, BART), ``torch.finfo(x.dtype).min`` masks (GPT-Neo,
Bloom), a Python type as a dtype (Llama 4), ``ids[mask] = 0`` (Gemma 3) and ``x @ self.weight.T`` (Falcon).
Each used to make soft tracing keep the decoder opaque."""
from __future__ import annotations

import operator
import sys
import types
import warnings

import pytest
import torch
from torch import nn

from pruning import PruningIR
from pruning.verify import equivalence_error, perturb


class TransposedLinear(nn.Module):
    """Falcon's linear layer: a plain weight used through ``.T``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in ** 0.5)

    def forward(self, x):
        return x @ self.weight.T


class MaskedDecoder(nn.Module):
    """One attention-like mixing step over positions with an additive causal mask built from traced sizes."""

    def __init__(self, dim: int = 8, hidden: int = 12) -> None:
        super().__init__()
        self.up, self.down = TransposedLinear(dim, hidden), TransposedLinear(hidden, dim)
        self.mix = nn.Linear(dim, dim)

    def forward(self, x):
        batch, length = x.shape[0], x.shape[1]
        keep = torch.ones(batch, length, length, device=x.device).tril().bool()  # sizes one by one
        lowest = torch.finfo(x.dtype).min  # the limit of the run's dtype, not the example's
        counts = torch.zeros(batch, device=x.device, dtype=int) + length  # a Python type as the dtype
        scores = torch.zeros(batch, length, length, dtype=x.dtype, device=x.device).masked_fill(~keep, lowest)
        weights = torch.softmax(scores + x @ x.transpose(1, 2), dim=-1)
        h = self.down(torch.relu(self.up(weights @ x)))
        return self.mix(h) * (counts[:, None, None].to(float) / length).to(h.dtype)  # a Python type, positional


def _traced(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no soft-tracing fallback
        return PruningIR(model, example_input=x)


def test_factories_with_traced_sizes_are_graph_ops_and_the_decoder_prunes_exactly():
    model, x = perturb(MaskedDecoder().eval()), torch.randn(2, 5, 8)
    ir = _traced(model, x)
    s = ir.snapshot()
    assert s.opaque_ops == []
    targets = {n.target for n in s.model.graph.nodes if n.op == "call_function"}
    assert {torch.ones, torch.zeros, torch.finfo} <= targets  # the originals, not the tracing wrappers
    assert torch.ones is not None and torch.ones(2).shape == (2,)  # restored after tracing
    hidden = [group for group in s.groups if {name.split(".")[0] for name in s.slices(group[0])} == {"up", "down"}]
    assert len(hidden) == 1 and len(hidden[0]) == 12  # the .T weights' inner dim is one prunable group
    labels = hidden[0][::2]
    assert equivalence_error(ir, labels, x, dtype=torch.float64) < 1e-10
    pruned = ir.prune(labels=labels).model
    assert pruned.up.weight.shape == (6, 8) and pruned.down.weight.shape == (8, 6)
    other = torch.randn(3, 7, 8)  # other sizes: the mask and counts follow them
    torch.testing.assert_close(ir.model(other), model(other))


def test_the_dtype_limit_is_read_when_the_graph_runs():
    """``torch.finfo(x.dtype).min`` stays a graph op: in float64 the mask is float64's lowest, and the traced
    graph computes what the model computes (a float32 constant would not be the lowest there)."""
    model, x = perturb(MaskedDecoder().eval()), torch.randn(2, 5, 8)
    graph = _traced(model, x).model
    x64 = x.double()
    torch.testing.assert_close(graph.double()(x64), model.double()(x64), rtol=0, atol=0)
    finfo = next(n for n in graph.graph.nodes if n.target is torch.finfo)
    assert finfo.args[0].op != "get_attr" and "dtype" in finfo.args[0].format_node()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_a_pruned_decoder_runs_in_half_precision_on_the_device(device):
    """Traced and pruned in float32 on the CPU, run in float16 on ``device``: the mask's fill is float16's
    lowest (float32's would overflow float16), and the sizes' tensors are made on the input's device."""
    model, x = perturb(MaskedDecoder().eval()), torch.randn(2, 5, 8)
    ir = _traced(model, x)
    labels = ir.snapshot().groups[0][::2]
    reference = ir.prune(labels=labels).model.double()(x.double())
    out = ir.prune(labels=labels).model.to(device, torch.float16)(x.to(device, torch.float16))
    assert out.dtype == torch.float16 and out.device.type == device
    torch.testing.assert_close(out.cpu().double(), reference, rtol=2e-2, atol=2e-2)


def test_graphs_with_recorded_factories_survive_a_dill_round_trip(tmp_path):
    """fx traces a GraphModule's code again to unpickle it, so the factories must record their calls then too."""
    dill = pytest.importorskip("dill")
    model, x = perturb(MaskedDecoder().eval()), torch.randn(2, 5, 8)
    ir = _traced(model, x)
    torch.save(ir, tmp_path / "ir.pt", pickle_module=dill)
    loaded = torch.load(tmp_path / "ir.pt", pickle_module=dill, weights_only=False)
    torch.testing.assert_close(loaded.model(x), ir.model(x), rtol=0, atol=0)
    assert torch.finfo(torch.float16).max == 65504  # torch.finfo is the real class again
    ids = torch.tensor([[1, 9, 3, 9]])
    ir = _traced(perturb(Blanking().eval()), ids)
    torch.save(ir, tmp_path / "assigning.pt", pickle_module=dill)
    loaded = torch.load(tmp_path / "assigning.pt", pickle_module=dill, weights_only=False)
    torch.testing.assert_close(loaded.model(ids), ir.model(ids), rtol=0, atol=0)


def test_a_transposed_view_keeps_channels_on_its_swapped_dims():
    class Batched(nn.Module):  # x.mT: the last two dims swapped, the batch dim kept
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 10), nn.Conv1d(10, 5, 1)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)).mT)  # a's features are the conv's channels

    model, x = perturb(Batched().eval()), torch.randn(2, 4, 6)
    ir = _traced(model, x)
    s = ir.snapshot()
    assert [len(group) for group in s.groups] == [10]
    labels = s.groups[0][::3]
    assert equivalence_error(ir, labels, x, dtype=torch.float64) < 1e-10
    assert ir.prune(labels=labels).model.b.weight.shape == (5, 6, 1)


class Blanking(nn.Module):
    """Writes into traced tensors: token ids (Gemma 3 blanks its image tokens) and the hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.a, self.b = nn.Embedding(10, 6), nn.Linear(6, 12), nn.Linear(12, 6)

    def forward(self, ids):
        ids = ids.clone()
        ids[ids == 9] = 0
        h = self.embed(ids)
        h[:, 0] = 0.5  # the first position of every hidden channel
        return self.b(torch.relu(self.a(h)))


def test_item_assignment_is_a_graph_op_and_keeps_the_channels_written():
    model, ids = perturb(Blanking().eval()), torch.tensor([[1, 9, 3, 9], [9, 2, 2, 5]])
    ir = _traced(model, ids)
    s = ir.snapshot()
    assert s.opaque_ops == [] and "__setitem__" not in vars(torch.fx.Proxy)  # removed after tracing
    assert sum(n.target is operator.setitem for n in s.model.graph.nodes) == 2
    assert [len(group) for group in s.groups] == [12]  # a/b's features; the written hidden channels stay
    labels = s.groups[0][::2]
    assert equivalence_error(ir, labels, ids, dtype=torch.float64) < 1e-10
    torch.testing.assert_close(ir.model(ids), model(ids), rtol=0, atol=0)
    assert torch.equal(ids, torch.tensor([[1, 9, 3, 9], [9, 2, 2, 5]]))  # the input was not written


@pytest.mark.parametrize("name", ["opt", "gpt_neo", "falcon"])
def test_hugging_face_decoders_with_such_masks_prune(name):
    transformers = pytest.importorskip("transformers")
    size = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, use_cache=False)
    if name == "opt":
        config = transformers.OPTConfig(ffn_dim=48, num_hidden_layers=1, word_embed_proj_dim=32, **size)
        model = transformers.OPTForCausalLM(config)
    elif name == "gpt_neo":
        config = transformers.GPTNeoConfig(num_layers=1, attention_types=[[["global"], 1]], intermediate_size=48, **size)
        model = transformers.GPTNeoForCausalLM(config)
    else:
        config = transformers.FalconConfig(num_hidden_layers=1, ffn_hidden_size=48, **size)
        model = transformers.FalconForCausalLM(config)
    model, x = perturb(model.eval()), torch.randint(0, 64, (2, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' own deprecation notices
        ir = PruningIR(model, example_input=x)
    s = ir.snapshot()
    assert all("Decoder" not in op and "Model" not in op for op in s.opaque_ops)  # traced through
    normalized = s.analysis.normalized
    exact = [label for group in s.groups for label in group[::2] if not normalized[label.index]]
    assert exact and equivalence_error(ir, exact, x, dtype=torch.float64) < 1e-10
    out = ir.prune(labels=exact).model(x)
    assert type(out) is type(model(x)) and out.logits.shape == (2, 7, 64)


def test_a_hugging_face_model_traces_where_jax_is_installed(monkeypatch):
    """transformers asks every tensor ``hasattr(x, "jax")`` and calls ``x.jax()`` if jax imports: on a Proxy
    that recorded a call no tensor can run (seen on a machine with jax; here jax is a stand-in module)."""
    transformers = pytest.importorskip("transformers")
    jax = types.ModuleType("jax")
    jax.core = types.SimpleNamespace(Tracer=type("Tracer", (), {}))
    monkeypatch.setitem(sys.modules, "jax", jax)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, use_cache=False)
    model, x = perturb(transformers.LlamaForCausalLM(config).eval()), torch.randint(0, 64, (2, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' own deprecation notices
        ir = PruningIR(model, example_input=x)
    s = ir.snapshot()
    assert not [n for n in s.model.graph.nodes if n.op == "call_method" and n.target == "jax"]
    assert s.opaque_ops == []
    torch.testing.assert_close(s.model(x).logits, model(x).logits, rtol=0, atol=0)
    from transformers.utils import import_utils
    assert import_utils.is_jax_jitting(x) is False and import_utils.is_jax_jitting.__name__ == "is_jax_jitting"
