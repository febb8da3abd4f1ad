"""Branches on tensor sizes: traced for the example input's sizes, guarded in the graph; comparisons and
cat of a split as rules."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning import PruningIR
from pruning.verify import equivalence_error, perturb


class PadToWindow(nn.Module):
    """Pads its feature map to a multiple of the window, as window-attention and patch models do, and
    doubles it only when it has 8 channels (a branch on a channel count)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1)
        self.c, self.head = nn.Conv2d(6, 5, 1), nn.Linear(5, 2)
        self.window = 4

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        height, width = y.shape[-2:]
        if height % self.window != 0 or width % self.window != 0:
            y = F.pad(y, (0, (-width) % self.window, 0, (-height) % self.window))
        y = self.c(torch.relu(y))
        if y.shape[1] == 5:
            y = y * 2
        return self.head(y.mean((2, 3)))


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = PadToWindow()

    def forward(self, x):
        return self.inner(x)


def _owners(snapshot) -> dict[str, set[int]]:
    return {site.name: set(site.label_index.tolist()) for site in snapshot.param_sites if site.dim == 0}


def test_branches_on_sizes_take_the_examples_way_and_prune_exactly():
    model = perturb(Wrapped().eval())
    x = torch.randn(2, 3, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no soft-tracing fallback
        ir = PruningIR(model, example_input=x)
    s = ir.snapshot()
    assert s.opaque_ops == []
    owners, prunable = _owners(s), {label.index for label in s.labels}
    assert owners["inner.a.weight"] <= prunable and owners["inner.b.weight"] <= prunable
    assert not owners["inner.c.weight"] & prunable  # its count decides `if y.shape[1] == 5`
    assert equivalence_error(ir, s.labels[::2], x) < 1e-6
    pruned = ir.prune(labels=s.labels[::2]).model
    assert pruned(torch.randn(1, 3, 6, 7)).shape == (1, 2)  # other sizes taking the same branches run


def test_an_input_whose_sizes_flip_a_branch_is_refused_by_the_graph():
    x = torch.randn(2, 3, 10, 10)
    ir = PruningIR(Wrapped().eval(), example_input=x)
    pruned = ir.prune(labels=ir.snapshot().labels[:2]).model
    with pytest.raises(AssertionError, match=r"a condition on tensor sizes or dtypes \(here True\) in inner differs"):
        pruned(torch.randn(2, 3, 12, 12))  # divisible by the window: no padding in the model's own code
    with pytest.raises(AssertionError, match="condition on tensor sizes"):
        ir.model(torch.randn(2, 3, 12, 12))  # the unpruned traced model too: the guard is the trace's


def test_without_an_example_size_branches_stay_opaque_as_before():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ir = PruningIR(Wrapped().eval())
    assert any("soft tracing" in str(w.message) and "'inner'" in str(w.message) for w in caught)
    assert not any(n.target is torch._assert for n in ir.model.graph.nodes)


class ValueBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.a(x)
        if y.sum() > 0:  # a value, not a size: still untraceable
            y = y * 2
        return self.b(y)


def test_branches_on_values_still_fail_tracing():
    with pytest.raises(Exception, match="control flow"):
        PruningIR(ValueBranch().eval(), soft_tracing=False, example_input=torch.randn(1, 3, 4, 4))


class MaskedAndRegrouped(nn.Module):
    """A comparison of tensors as a mask, and cat over the pieces of a split passed as one value."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.a(x)
        y = y.masked_fill(y < 0, 0.0)
        y = torch.cat(torch.split(y, 2, dim=1), dim=1)
        return self.b(y)


def test_comparisons_are_elementwise_and_cat_takes_a_split():
    model = perturb(MaskedAndRegrouped().eval())
    x = torch.randn(2, 3, 5, 5)
    ir = PruningIR(model, example_input=x)
    s = ir.snapshot()
    assert s.opaque_ops == []
    assert _owners(s)["a.weight"] <= {label.index for label in s.labels}
    assert equivalence_error(ir, s.labels[::2], x) < 1e-6


class HeadsFromShape(nn.Module):
    """Attention written as Hugging Face does: the head layout unpacks the input's shape, and the
    layer checks the input's rank with len()."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))
        self.head_dim = 4

    def forward(self, x):
        if len(x.shape) != 3:
            raise ValueError("expected (batch, tokens, features)")
        heads = (*x.shape[:-1], -1, self.head_dim)
        q, k, v = (p(x).view(heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(*x.shape[:-1], -1))


def test_len_and_unpacking_of_a_shape_follow_the_examples_rank():
    model = perturb(HeadsFromShape().eval())
    x = torch.randn(2, 5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ir = PruningIR(model, example_input=x)
    s = ir.snapshot()
    assert s.opaque_ops == []
    assert any({"v.weight", "o.weight"} <= set(s.slices(group[0])) for group in s.groups)
    assert equivalence_error(ir, [label for group in s.groups for label in group[::2]], x, dtype=torch.float64) < 1e-10
    pruned = ir.prune(labels=[group[0] for group in s.groups]).model
    assert pruned(torch.randn(3, 7, 8)).shape == (3, 7, 8)  # other batch and token counts: same rank


def test_a_tiny_llama_prunes_its_hidden_size_mlp_and_value_features():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, use_cache=False)

    class Logits(nn.Module):  # forward(ids) -> logits: the decorated top-level forward is not traced
        def __init__(self):
            super().__init__()
            self.lm = transformers.LlamaForCausalLM(config)

        def forward(self, ids):
            return self.lm(input_ids=ids, use_cache=False).logits

    model = perturb(Logits().eval())
    ids = torch.randint(0, 64, (2, 6))
    ir = PruningIR(model, example_input=ids)
    s = ir.snapshot()
    assert s.opaque_ops == []
    owned = [{name.rsplit(".", 2)[-2] for name in s.slices(group[0])} for group in s.groups]
    assert {"gate_proj", "up_proj", "down_proj"} in owned and {"v_proj", "o_proj"} in owned
    # the hidden size: its RMSNorms are hand-written means, so its labels are prunable but normalized
    hidden = next(group for group, names in zip(s.groups, owned) if "embed_tokens" in names)
    assert len(hidden) == 32 and all(s.analysis.normalized[label.index] for label in hidden)
    assert {"lm_head", "q_proj", "k_proj", "input_layernorm", "norm"} <= {name.rsplit(".", 2)[-2] for name in s.slices(hidden[0])}
    exact = [label for group in s.groups for label in group[::2] if not s.analysis.normalized[label.index]]
    assert equivalence_error(ir, exact, ids, dtype=torch.float64) < 1e-10
    pruned = ir.prune(labels=[label for group in s.groups for label in group[::2]]).model
    assert pruned.lm.model.embed_tokens.embedding_dim == 16
    assert pruned(torch.randint(0, 64, (3, 9))).shape == (3, 9, 64)
    with pytest.raises(AssertionError, match="condition on tensor sizes"):
        pruned(torch.randint(0, 64, (1, 9)))  # batch 1: the mask code takes another branch


@pytest.mark.parametrize("model_cls, shape", [(Wrapped, (2, 3, 10, 10)), (Wrapped, (2, 3, 8, 8)), (HeadsFromShape, (2, 5, 8))])
def test_guarded_graphs_survive_a_dill_round_trip(model_cls, shape, tmp_path):
    """fx re-traces a GraphModule's code when unpickling it: the guards' len() and negation must be graph ops
    that trace again (the trace stage saves the IR with dill, select and prune load it)."""
    dill = pytest.importorskip("dill")
    x = torch.randn(*shape)
    ir = PruningIR(perturb(model_cls().eval()), example_input=x)
    labels = [group[0] for group in ir.snapshot().groups]
    torch.save(ir, tmp_path / "ir.pt", pickle_module=dill)
    loaded = torch.load(tmp_path / "ir.pt", pickle_module=dill, weights_only=False)
    torch.save(ir.prune(labels=labels).model, tmp_path / "pruned.pt", pickle_module=dill)
    pruned = torch.load(tmp_path / "pruned.pt", pickle_module=dill, weights_only=False)
    torch.testing.assert_close(loaded.model(x), ir.model(x), rtol=0, atol=0)
    torch.testing.assert_close(pruned(x), ir.prune(labels=labels).model(x), rtol=0, atol=0)
    guards = [n for n in loaded.model.graph.nodes if n.target is torch._assert]
    assert guards and len(guards) == sum(n.target is torch._assert for n in ir.model.graph.nodes)


@torch.library.custom_op("pruning_tests::doubled", mutates_args=())
def doubled(x: torch.Tensor) -> torch.Tensor:
    """An op without a fake kernel, as the grouped matmul of a mixture of experts."""
    return x * 2


class ReadsValues(nn.Module):
    """A leaf calling an op that fake tensors cannot run."""

    def forward(self, x):
        return doubled(x)


class BranchAfterValues(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.values, self.inner = ReadsValues(), PadToWindow()

    def forward(self, x):
        return self.inner(self.values(x))


def test_a_size_branch_after_an_op_without_a_fake_kernel_is_decided_on_the_real_example():
    """The branches' sizes come from the real example once an op cannot run on fake tensors; before, the one
    op left every later size unknown, and the module with the branch opaque."""
    model, x = perturb(BranchAfterValues().eval()), torch.randn(1, 3, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no soft-tracing fallback
        ir = PruningIR(model, example_input=x, leaf_modules=[ReadsValues])
    s = ir.snapshot()
    assert any(n.target is torch._assert for n in s.model.graph.nodes)
    assert [n.target for n in s.model.graph.nodes if n.op == "call_module"][0] == "values"  # kept whole
    labels = [label for group in s.groups for label in group[::2]]
    assert labels and equivalence_error(ir, labels, x, dtype=torch.float64) < 1e-10


class PatchTransformer(nn.Module):
    """A MobileViT block in one forward (timm's MobileVitBlock): the feature map, resized up to a multiple of
    the patch size where it is not one (a branch on sizes), is unfolded into patches (channels merged with the
    batch and patch rows, then split back out as the last dim), mixed per patch by an MLP over the channels,
    folded back, projected and fused with the block's input."""

    def __init__(self, channels: int = 6, width: int = 8, patch: int = 2) -> None:
        super().__init__()
        self.patch = patch
        self.local, self.to_width = nn.Conv2d(channels, channels, 3, padding=1), nn.Conv2d(channels, width, 1)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.project, self.fuse = nn.Conv2d(width, channels, 1), nn.Conv2d(2 * channels, channels, 3, padding=1)

    def forward(self, x):
        y = self.to_width(self.local(x))
        p = self.patch
        B, C, H, W = y.shape
        new_h, new_w = math.ceil(H / p) * p, math.ceil(W / p) * p
        nh, nw = new_h // p, new_w // p
        resized = new_h != H or new_w != W
        if resized:
            y = F.interpolate(y, size=(new_h, new_w), mode="bilinear", align_corners=False)
        y = y.reshape(B * C * nh, p, nw, p).transpose(1, 2)
        y = y.reshape(B, C, nh * nw, p * p).transpose(1, 3).reshape(B * p * p, nh * nw, -1)
        y = y + self.mlp(y)
        y = y.contiguous().view(B, p * p, nh * nw, -1).transpose(1, 3).reshape(B * C * nh, nw, p, p)
        y = y.transpose(1, 2).reshape(B, C, nh * p, nw * p)
        if resized:
            y = F.interpolate(y, size=(H, W), mode="bilinear", align_corners=False)
        return self.fuse(torch.cat((x, self.project(y)), dim=1))


class PatchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, 6, 3, padding=1), PatchTransformer(), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.block(torch.relu(self.stem(x)))))


def _width_labels(snapshot) -> set[int]:
    """The labels of the patch transformer's width (the MLP's input features)."""
    return {int(i) for site in snapshot.param_sites if site.name == "block.mlp.0.weight" and site.dim == 1
            for i in site.label_index}


@pytest.mark.parametrize("size", [8, 7])  # 7: resized to a multiple of the patch size and back
@pytest.mark.parametrize("lazy", [True, False])
def test_a_block_that_branches_on_sizes_prunes_through_its_patches_without_an_example(lazy, size):
    """Without an example the block's size branch cannot be traced, so soft tracing kept the whole block
    opaque (timm's MobileViT kept 0.84 of its parameters at 50% uniform); the first input traces it again
    as an example would, and its width prunes exactly through the patch reshapes."""
    torch.manual_seed(0)
    model = perturb(PatchNet().eval()).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the lazy trace warns that the block stays whole until an input comes
        ir = PruningIR(model) if lazy else PruningIR(model, example_input=x)
    s = ir.snapshot()
    s.analyze(x)
    assert s.opaque_ops == []
    width = _width_labels(s)
    assert len(width) == 8 and width <= {label.index for label in s.labels}
    dead = [s.label(i) for i in sorted(width)[::2]]
    assert equivalence_error(ir, dead, x, dtype=torch.float64) < 1e-12
    pruned = ir.prune(labels=dead).model
    assert pruned.get_submodule("block.mlp.0").in_features == 4 and pruned(x).shape == (2, 2, size, size)


def test_a_lazy_ir_analysed_with_keyword_inputs_keeps_its_graph():
    """An example is positional: the first input given by keyword does not trace the model again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ir = PruningIR(PatchNet().eval())
    graph = ir.snapshot().graph
    with pytest.raises(ValueError, match=r"no prunable channel.*here: block \("):  # the whole block stays opaque
        ir.snapshot().analyze(x=torch.randn(1, 3, 8, 8))
    assert ir.snapshot().graph is graph


def test_timm_mobilevit_prunes_its_transformers_after_lazy_calibration():
    """As a user would: ``PruningIR(model)``, calibrate, remove half of every group."""
    timm = pytest.importorskip("timm")
    from pruning import LossAwareCriterion
    from pruning.selectors import UniformLabelSelector

    torch.manual_seed(0)
    model = perturb(timm.create_model("mobilevit_xxs", num_classes=10).eval())
    x = torch.randn(1, 3, 256, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ir = PruningIR(model)
    with LossAwareCriterion(ir) as collector:
        collector(x).sum().backward()
    s = ir.snapshot()
    assert s.opaque_ops == []
    selected = UniformLabelSelector(0.5).select(ir)
    left = sum(p.numel() for p in ir.prune(labels=selected).model.parameters())
    assert left / sum(p.numel() for p in model.parameters()) < 0.3  # 0.96 when the MobileViT blocks stayed whole
    exact = [label for label in selected if not s.analysis.normalized[label.index]]
    assert equivalence_error(ir, exact, x, dtype=torch.float64) < 1e-10
