"""Rules beyond convolutions and linears: einsum, functional PReLU, pixel (un)shuffle, flip, max-unpooling,
bilinear layers and ops that mix channels: which parameters prune together, and what stays fixed."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruning import PruningIR
from pruning.registry import RULES
from pruning.replay import pruning_record, replay
from pruning.rules import Rule, register_rule
from pruning.verify import equivalence_error, perturb

from models import BilinearHead, EinsumAttention, FunctionalPReLU, Im2Col, PixelShuffles, Recurrent


def owners(ir: PruningIR) -> list[set[str]]:
    """For each group: the parameter dims its labels own, as 'name:dim'."""
    s = ir.snapshot()
    return [{f"{name}:{dim}" for name, sites in s.slices(group[0]).items() for dim, _ in sites} for group in s.groups]


def test_einsum_couples_contracted_features_and_follows_free_ones():
    ir = PruningIR(EinsumAttention().eval(), example_input=torch.randn(2, 5, 12))
    assert sorted(map(sorted, owners(ir))) == sorted([
        ["k.bias:0", "k.weight:0", "q.bias:0", "q.weight:0"],  # contracted by 'd' in bid,bjd->bij
        ["mix:0", "v.bias:0", "v.weight:0"],                  # v's 'd' passes on, then meets mix's rows
        ["head.weight:1", "mix:1"],                           # mix's 'e' reaches the head
    ])


class _EinsumNet(nn.Module):
    """x (2, 6, 3) -> lin0(x), lin1(x) (6 features each) -> operands -> einsum -> head (if any)."""

    def __init__(self, equation, operands, head_in):
        super().__init__()
        self.equation, self.operands = equation, operands
        self.lin0, self.lin1 = nn.Linear(3, 6), nn.Linear(3, 6)
        self.head = nn.Linear(head_in, 2) if head_in else None

    def forward(self, x):
        y = torch.einsum(self.equation, *self.operands(self, x))
        return y if self.head is None else self.head(y)


def _both(m, x):
    return m.lin0(x), m.lin1(x)


@pytest.mark.parametrize("equation, operands, head_in, expected", [
    ("bij,bij->bi", _both, None, [{"lin0", "lin1"}]),     # contracted features prune together
    ("bij,bik->bjk", _both, 6, [{"lin1", "head"}]),       # lin0's j reaches the model output
    ("bij,bkj", _both, None, [{"lin0", "lin1"}]),         # implicit output 'ik'
    ("bii->bi", lambda m, x: (m.lin0(x),), 6, []),        # a diagonal
    ("bij->bi", lambda m, x: (m.lin0(x),), 6, []),        # a sum inside one operand
    ("...t,...t->...", lambda m, x: (m.lin0(x).transpose(1, 2), m.lin1(x).transpose(1, 2)), 6,
     [{"lin0", "lin1", "head"}]),                          # features inside '...' broadcast together
    ("...t,t->...", lambda m, x: (m.lin0(x).transpose(1, 2), x[0, :, 0]), 6, [{"lin0", "head"}]),
])
def test_einsum_prunes_what_its_subscripts_allow(equation, operands, head_in, expected):
    model = perturb(_EinsumNet(equation, operands, head_in).eval())
    x = torch.randn(2, 6, 3)
    if not expected:
        with pytest.raises(ValueError, match="no prunable channel"):
            PruningIR(model, example_input=x)
        return
    ir = PruningIR(model, example_input=x)
    assert [{name.split(".")[0] for name in group} for group in owners(ir)] == expected
    assert equivalence_error(ir, [label for group in ir.snapshot().groups for label in group[::2]], x) < 1e-4


def test_einsum_sublist_form_blocks_its_operands():
    class Sublist(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 6), nn.Linear(3, 6)

        def forward(self, x):
            return torch.einsum(self.a(x), [0, 1], self.b(x), [0, 1], [0])

    with pytest.raises(ValueError, match="no prunable channel"):
        PruningIR(Sublist().eval(), example_input=torch.randn(4, 3))


def test_einsum_attention_prunes_exactly():
    model = perturb(EinsumAttention().eval())
    x = torch.randn(2, 5, 12)
    ir = PruningIR(model, example_input=x)
    labels = [label for group in ir.snapshot().groups for label in group[::2]]
    assert equivalence_error(ir, labels, x) < 1e-4
    pruned = ir.prune(labels=labels).model
    assert pruned.q.out_features == pruned.k.out_features == 8 and pruned.v.out_features == 10
    assert tuple(pruned.mix.shape) == (10, 12)


def test_functional_prelu_slope_follows_channels_shared_slope_leaves_them_free():
    ir = PruningIR(FunctionalPReLU().eval(), example_input=torch.randn(1, 3, 8, 8))
    groups = owners(ir)
    assert {"conv1.weight:0", "conv1.bias:0", "slope:0", "conv2.weight:1"} <= next(g for g in groups if "slope:0" in g)
    assert any("conv2.weight:0" in g and "conv3.weight:1" in g for g in groups)
    pruned = ir.prune(labels=[g[0] for g in ir.snapshot().groups]).model
    assert pruned.slope.shape == (7,) and pruned.conv2.out_channels == 7
    assert pruned(torch.randn(1, 3, 8, 8)).shape == (1, 4, 6, 6)


def test_functional_prelu_slope_made_in_forward_is_a_constant_sliced_with_the_channels():
    class MadeInForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.out(F.prelu(self.conv(x), torch.linspace(0.1, 0.8, 8)))

    x = torch.randn(1, 3, 4, 4)
    ir = PruningIR(perturb(MadeInForward().eval()), example_input=x)
    (group,) = owners(ir)
    assert "_tensor_constant0:0" in group and "conv.weight:0" in group
    assert equivalence_error(ir, ir.snapshot().groups[0][::2], x) < 1e-5


def _label_owning(snapshot, name: str, dim: int, index: int):
    return next(label for label in snapshot.labels
                if any(d == dim and index in idx for d, idx in snapshot.slices(label).get(name, [])))


def test_pixel_shuffles_flip_and_unpool_map_channels():
    ir = PruningIR(PixelShuffles().eval(), example_input=torch.randn(1, 3, 8, 8))
    s = ir.snapshot()
    assert s.opaque_ops == []
    # unshuffle: a's channel 1 becomes b's inputs 4..7
    assert [idx.tolist() for d, idx in s.slices(_label_owning(s, "a.weight", 0, 1))["b.weight"]] == [[4, 5, 6, 7]]
    # shuffle: b's outputs 4..7 pack into c's input 1, one label
    assert [idx.tolist() for d, idx in s.slices(_label_owning(s, "c.weight", 1, 1))["b.weight"] if d == 0] == [[4, 5, 6, 7]]
    # flip of the channel dim: c's output 0 is the head's input 4
    assert [idx.tolist() for d, idx in s.slices(_label_owning(s, "c.weight", 0, 0))["head.weight"]] == [[4]]
    pruned = ir.prune(labels=[group[0] for group in s.groups]).model
    assert (pruned.b.in_channels, pruned.b.out_channels, pruned.c.in_channels) == (20, 12, 3)
    assert pruned(torch.randn(1, 3, 8, 8)).shape == (1, 4, 8, 8)


def test_unfold_spreads_channels_over_kernel_positions_and_fold_packs_them():
    ir = PruningIR(Im2Col().eval(), example_input=torch.randn(2, 3, 8, 8))
    s = ir.snapshot()
    assert s.opaque_ops == []
    # nn.Unfold: a's channel 1 becomes proj's inputs 4..7 (its four kernel positions)
    assert [idx.tolist() for d, idx in s.slices(_label_owning(s, "a.weight", 0, 1))["proj.weight"]] == [[4, 5, 6, 7]]
    # F.fold: proj's outputs 8..11 sum into the head's input channel 2, one label
    assert [idx.tolist() for d, idx in s.slices(_label_owning(s, "head.weight", 1, 2))["proj.weight"]] == [[8, 9, 10, 11]]
    pruned = ir.prune(labels=[group[0] for group in s.groups]).model
    assert (pruned.proj.in_features, pruned.proj.out_features, pruned.head.out_channels, pruned.fc.in_features) == (12, 8, 4, 16)
    assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 16, 2)


def test_fold_with_a_computed_kernel_size_keeps_its_channels_and_says_so():
    class Computed(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 8)

        def forward(self, x):  # (1, 16, 6) tokens -> 2 channels x 2x2 kernel, the size read from the input
            return F.fold(self.proj(x).transpose(1, 2), (8, 8), kernel_size=x.shape[-1] // 3, stride=2)

    with pytest.raises(ValueError, match=r"no prunable channel.*fold \(torch.nn.functional.fold\)"):
        PruningIR(Computed().eval(), example_input=torch.randn(1, 16, 6))


def test_bilinear_prunes_both_inputs_and_its_outputs():
    ir = PruningIR(BilinearHead().eval(), example_input=torch.randn(2, 5, 12))
    assert sorted(map(sorted, owners(ir))) == sorted([
        ["a.bias:0", "a.weight:0", "bilinear.weight:1"],
        ["b.bias:0", "b.weight:0", "bilinear.weight:2"],
        ["bilinear.bias:0", "bilinear.weight:0", "head.weight:1"],
    ])
    pruned = ir.prune(labels=[group[0] for group in ir.snapshot().groups]).model
    assert (pruned.bilinear.in1_features, pruned.bilinear.in2_features, pruned.bilinear.out_features) == (9, 7, 5)


@pytest.mark.parametrize("mixer", [nn.Softmax2d(), nn.LocalResponseNorm(3)])
def test_ops_that_mix_channels_block_them_without_being_opaque(mixer):
    model = nn.Sequential(nn.Conv2d(3, 8, 1), mixer, nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Conv2d(6, 2, 1))
    s = PruningIR(model.eval(), example_input=torch.randn(1, 3, 4, 4)).snapshot()
    assert s.opaque_ops == []
    assert [sorted(s.slices(g[0])) for g in s.groups] == [["2.bias", "2.weight", "4.weight"]]


def test_recurrent_hidden_units_are_one_label_across_layers_directions_and_gates():
    ir = PruningIR(Recurrent().eval(), example_input=torch.randn(2, 5, 12))
    s = ir.snapshot()
    assert s.opaque_ops == []
    hidden = _label_owning(s, "lstm.weight_hh_l0", 1, 3)
    owned = s.slices(hidden)
    for tag in ("l0", "l0_reverse", "l1", "l1_reverse"):
        assert [idx.tolist() for d, idx in owned[f"lstm.weight_hh_{tag}"] if d == 0] == [[3, 13, 23, 33]]  # i, f, g, o
        assert [idx.tolist() for d, idx in owned[f"lstm.weight_hh_{tag}"] if d == 1] == [[3]]
    assert {d: idx.tolist() for d, idx in owned["lstm.weight_ih_l1"]} == {0: [3, 13, 23, 33], 1: [3, 13]}  # both directions below
    assert [idx.tolist() for d, idx in owned["gru.weight_ih_l0"]] == [[3, 13]]
    assert [idx.tolist() for d, idx in owned["head.weight"]] == [[11]]  # via h_n[-1]
    pruned = ir.prune(labels=[group[0] for group in s.groups]).model
    assert (pruned.lstm.input_size, pruned.lstm.hidden_size, pruned.gru.input_size, pruned.gru.hidden_size) == (15, 9, 18, 7)
    pruned.train()(torch.randn(2, 5, 12)).sum().backward()


@pytest.mark.parametrize("make, call", [
    (lambda: nn.LSTM(6, 8, batch_first=True, proj_size=4), lambda m, x: m(x)[0]),
    (lambda: nn.GRU(6, 8, batch_first=True), lambda m, x: m(x, torch.zeros(1, 2, 8))[0]),
])
def test_recurrent_with_projection_or_given_state_is_opaque(make, call):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.rnn = nn.Linear(3, 6), make()
            self.head, self.out = nn.Linear(4 if getattr(self.rnn, "proj_size", 0) else 8, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.out(torch.relu(self.head(call(self.rnn, self.a(x)))))

    s = PruningIR(Net().eval(), example_input=torch.randn(2, 5, 3)).snapshot()
    assert s.opaque_ops == ["rnn (torch.nn.modules.rnn." + type(make()).__name__ + ")"]
    assert [sorted(s.slices(g[0])) for g in s.groups] == [["head.bias", "head.weight", "out.weight"]]


@pytest.mark.parametrize("functional", [False, True])
def test_channels_laid_out_as_a_convolutions_length_are_blocked(functional):
    # A state-space mixer (timm's EfficientViM) runs a Conv1d over a tensor whose "length" is another
    # layer's channels; the kernel mixes that dim, so those channels must stay (they were dropped
    # silently, and pruning them broke a later matmul).
    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.state, self.proj = nn.Conv1d(6, 5, 1), nn.Conv1d(6, 6, 1)
            self.readout, self.head = nn.Conv1d(6, 5, 1), nn.Conv1d(6, 3, 1)

        def forward(self, x):  # x: (B, 6, L)
            h = x @ self.state(x).transpose(1, 2)  # (B, 6, 5): the state's channels as length
            h = F.conv1d(h, self.proj.weight, self.proj.bias) if functional else self.proj(h)
            return self.head(h @ self.readout(x))  # contracts the length with readout's channels

    x = torch.randn(2, 6, 7)
    ir = PruningIR(perturb(Mixer().eval()), example_input=x)
    owned = [set(ir.snapshot().slices(g[0])) for g in ir.snapshot().groups]
    assert not any("state.weight" in o for o in owned)
    pruned = ir.prune(labels=[g[0] for g in ir.snapshot().groups]).model
    assert pruned(x).shape == (2, 3, 7)


def test_repeat_interleave_tile_and_unfold_keep_channels_prunable():
    class Repeats(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv1d(3, 4, 1), nn.Conv1d(3, 5, 1), nn.Conv1d(3, 6, 1)
            self.after_interleave, self.after_tile, self.after_unfold = nn.Conv1d(8, 2, 1), nn.Conv1d(10, 2, 1), nn.Linear(6, 2)

        def forward(self, x):  # x: (B, 3, L)
            y = self.after_interleave(self.a(x).repeat_interleave(2, dim=1))
            y = y + self.after_tile(self.b(x).repeat(1, 2, 1))
            windows = self.c(x).unfold(2, 3, 1)  # (B, 6, L - 2, 3)
            return y[..., :1] + self.after_unfold(windows.mean(-1).transpose(1, 2)).transpose(1, 2)[..., :1]

    x = torch.randn(2, 3, 7)
    ir = PruningIR(perturb(Repeats().eval()), example_input=x)
    s = ir.snapshot()
    assert s.opaque_ops == []
    assert [idx.tolist() for d, idx in s.slices(_label_owning(s, "a.weight", 0, 1))["after_interleave.weight"]] == [[2, 3]]
    assert [idx.tolist() for d, idx in s.slices(_label_owning(s, "b.weight", 0, 1))["after_tile.weight"]] == [[1, 6]]
    assert [idx.tolist() for d, idx in s.slices(_label_owning(s, "c.weight", 0, 1))["after_unfold.weight"]] == [[1]]
    labels = [label for group in s.groups for label in group[::2]]
    assert equivalence_error(ir, labels, x, dtype=torch.float64) < 1e-10


def test_repeat_interleave_by_a_count_computed_from_sizes():
    class GlobalQuery(nn.Module):  # gcvit: one query per image, repeated over its windows
        def __init__(self):
            super().__init__()
            self.q, self.k, self.head = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x, image):  # x: (windows, tokens, 3), image: (images, tokens, 3)
            q = self.q(image).repeat_interleave(x.shape[0] // image.shape[0], dim=0)
            return self.head(q * self.k(x))

    x, image = torch.randn(6, 5, 3), torch.randn(2, 5, 3)
    ir = PruningIR(perturb(GlobalQuery().eval()), example_input=(x, image))
    s = ir.snapshot()
    assert s.opaque_ops == []
    assert sorted(map(sorted, owners(ir))) == [["head.weight:1", "k.bias:0", "k.weight:0", "q.bias:0", "q.weight:0"]]
    assert equivalence_error(ir, s.groups[0][::2], x, image, dtype=torch.float64) < 1e-10


def test_tile_by_counts_computed_from_sizes():
    class TiledPosition(nn.Module):  # hiera: a window's position embedding tiled over the token grid
        def __init__(self):
            super().__init__()
            self.a, self.pos, self.head = nn.Linear(3, 4), nn.Parameter(torch.randn(1, 2, 4)), nn.Linear(4, 2)

        def forward(self, x):  # x: (B, tokens, 3)
            return self.head(self.a(x) + self.pos.tile((1, x.shape[1] // self.pos.shape[1], 1)))

    x = torch.randn(2, 6, 3)
    ir = PruningIR(perturb(TiledPosition().eval()), example_input=x)
    assert ir.snapshot().opaque_ops == []
    assert sorted(map(sorted, owners(ir))) == [["a.bias:0", "a.weight:0", "head.weight:1", "pos:2"]]
    assert equivalence_error(ir, ir.snapshot().groups[0][::2], x, dtype=torch.float64) < 1e-10


def test_reductions_over_channels_sum_exactly_normalize_statistics_and_block_positions():
    class Reductions(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.head = nn.Linear(3, 4), nn.Linear(3, 5), nn.Linear(3, 6), nn.Linear(5, 2)
            self.weight = nn.Parameter(torch.ones(5))

        def forward(self, x):  # x: (B, T, 3)
            total = self.a(x).sum(-1, keepdim=True)  # exact: a dead feature adds nothing
            y = self.b(x)
            y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight  # hand-written RMSNorm
            where = self.c(x).argmax(-1, keepdim=True).float()  # positions: blocked
            return self.head(y) + total + where

    x = torch.randn(2, 5, 3)
    ir = PruningIR(perturb(Reductions().eval()), example_input=x)
    s = ir.snapshot()
    by_owner = {min(s.slices(group[0])): group for group in s.groups}
    assert set(by_owner) == {"a.bias", "b.bias"}  # c's features are blocked by argmax
    assert not any(s.analysis.normalized[label.index] for label in by_owner["a.bias"])
    assert all(s.analysis.normalized[label.index] for label in by_owner["b.bias"])
    assert {"weight", "head.weight"} <= set(s.slices(by_owner["b.bias"][0]))
    assert equivalence_error(ir, by_owner["a.bias"][::2], x, dtype=torch.float64) < 1e-10


def test_input_channels_of_a_standardised_weight_enter_its_statistics():
    # NF-Net style: a 1x1 weight standardised per filter with F.batch_norm(training=True): its input
    # channels are in the statistics, so removing a dead one changes the other weights (valid, not
    # exact); the exact-equivalence check must not be offered them.
    class Std(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.w, self.head = nn.Conv2d(3, 6, 1), nn.Parameter(torch.randn(5, 6, 1, 1)), nn.Conv2d(5, 2, 1)

        def forward(self, x):
            w = F.batch_norm(self.w.reshape(1, 5, -1), None, None, training=True, eps=1e-5).reshape_as(self.w)
            return self.head(torch.relu(F.conv2d(torch.relu(self.a(x)), w)))

    ir = PruningIR(perturb(Std().eval()), example_input=torch.randn(1, 3, 4, 4))
    s = ir.snapshot()
    into_std = _label_owning(s, "a.weight", 0, 0)
    assert "w" in s.slices(into_std) and s.analysis.normalized[into_std.index]
    assert not s.analysis.normalized[_label_owning(s, "w", 0, 0).index]
    assert ir.prune(labels=[into_std]).model(torch.randn(1, 3, 4, 4)).shape == (1, 2, 4, 4)


def roll_last(x):
    return torch.roll(x, 1, dims=-1)


torch.fx.wrap("roll_last")


class PassThrough(Rule):
    """The worked example of :class:`pruning.registry.Rule`: the output carries the input's channels."""

    def propagate(self, ctx, node):
        return ctx.value(node.args[0])


class Rolls(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv1d(3, 6, 1), nn.Conv1d(6, 2, 1)

    def forward(self, x):
        return self.b(roll_last(self.a(x)))


@pytest.mark.parametrize("key", [roll_last, f"{__name__}.roll_last"], ids=["function", "qualified name"])
def test_rules_given_to_one_ir_apply_to_it_alone(key):
    registry_before = {name: dict(getattr(RULES, name)) for name in ("modules", "functions", "methods", "named")}
    x = torch.randn(1, 3, 5)
    with pytest.raises(ValueError, match="roll_last"):
        PruningIR(Rolls().eval(), example_input=x)
    model = perturb(Rolls().eval())
    ir = PruningIR(model, example_input=x, rules={key: PassThrough()})
    assert ir.snapshot().opaque_ops == [] and len(ir.snapshot().labels) == 6
    labels = ir.snapshot().labels[::2]
    assert equivalence_error(ir, labels, x) < 1e-6
    assert {name: dict(getattr(RULES, name)) for name in registry_before} == registry_before
    with pytest.raises(ValueError, match="roll_last"):  # another IR does not see them
        PruningIR(Rolls().eval(), example_input=x)
    pruned = ir.prune(labels=labels)  # the pruned IR analyses its model with the same rules
    assert len(pruned.snapshot().labels) == 3 and pruned.snapshot().opaque_ops == []
    lazy = PruningIR(model, rules={key: PassThrough()})  # analysed on its first forward pass
    lazy.snapshot().run(x)
    assert lazy.snapshot().opaque_ops == []
    rebuilt = replay(perturb(Rolls().eval()), pruning_record(ir, labels), rules={key: PassThrough()})
    assert rebuilt.a.out_channels == 3


def test_registered_rules_apply_to_every_ir_and_a_bad_rule_is_refused():
    x = torch.randn(1, 3, 5)
    register_rule(f"{__name__}.roll_last", PassThrough())
    try:
        assert PruningIR(perturb(Rolls().eval()), example_input=x).snapshot().opaque_ops == []
    finally:
        del RULES.named[f"{__name__}.roll_last"]
    with pytest.raises(TypeError, match="not a Rule instance"):
        PruningIR(Rolls().eval(), rules={roll_last: PassThrough})
    with pytest.raises(TypeError, match="cannot register a rule for 3"):
        PruningIR(Rolls().eval(), rules={3: PassThrough()})


def test_timm_same_padding_convolutions_prune():
    layers = pytest.importorskip("timm.layers")
    model = nn.Sequential(layers.Conv2dSame(3, 8, 3, stride=2), nn.ReLU(), layers.Conv2dSame(8, 4, 3, groups=4),
                          nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(1, 3, 9, 9)
    ir = PruningIR(perturb(model.eval()), example_input=x)
    s = ir.snapshot()
    assert s.opaque_ops == [] and len(s.groups) == 1
    assert equivalence_error(ir, s.groups[0][:2], x, dtype=torch.float64) < 1e-10
    assert ir.prune(labels=s.groups[0][:2]).model(x).shape == (1, 2, 5, 5)


def test_a_layernorm_without_weights_keeps_its_shape_when_the_model_around_it_is_pruned():
    """DiffLlama's per-head RMSNorm has no weight: pruning other channels must leave it as it is."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.LayerNorm(6, elementwise_affine=False),
                          nn.Linear(6, 2)).eval()
    x = torch.randn(3, 4)
    ir = PruningIR(model, example_input=x)
    groups = ir.snapshot().groups
    assert len(groups) == 1 and len(groups[0]) == 8  # the hidden 8; the normalized 6 are kept
    labels = groups[0][:4]
    assert equivalence_error(ir, labels, x, dtype=torch.float64) < 1e-12
    assert ir.prune(labels=labels).model.get_submodule("3").normalized_shape == (6,)


class Warps(nn.Module):
    """Features sampled at grid points (RAFT's lookup): their channels pass through grid_sample."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.flow = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        grid = torch.tanh(self.flow(x)).permute(0, 2, 3, 1)
        return self.b(F.grid_sample(torch.relu(self.a(x)), grid, align_corners=False))


def test_grid_sample_passes_the_sampled_channels_and_keeps_the_grid_s():
    model, x = perturb(Warps().eval()), torch.randn(2, 3, 9, 9)
    ir = PruningIR(model, example_input=x)
    snapshot = ir.snapshot()
    assert not snapshot.opaque_ops
    assert [len(g) for g in snapshot.groups] == [8]  # a's outputs; the flow's 2 are the grid's coordinates
    labels = snapshot.groups[0][:5]
    assert equivalence_error(ir, labels, x, dtype=torch.float64) < 1e-12
    assert ir.prune(labels=labels).model.get_submodule("b").in_channels == 3


class ChannelsLastPad(nn.Module):
    """Windowed attention's padding: a (B, H, W, C) tensor padded in H and W by F.pad(x, (0, 0, 0, 1, 0, 1))."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(torch.relu(F.pad(self.a(x), (0, 0, 0, 1, 0, 1))))


def test_a_channels_last_dim_that_f_pad_leaves_as_it_is_keeps_its_channels():
    model, x = perturb(ChannelsLastPad().eval()), torch.randn(2, 5, 5, 3)
    ir = PruningIR(model, example_input=x)
    snapshot = ir.snapshot()
    assert [len(g) for g in snapshot.groups] == [8]  # a's features, through the padding
    labels = snapshot.groups[0][:5]
    assert equivalence_error(ir, labels, x, dtype=torch.float64) < 1e-12
    assert ir.prune(labels=labels).model(x).shape == (2, 6, 6, 2)
