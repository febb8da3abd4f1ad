"""torch.nn's transformer containers are traced through (their slow path), so their attention, feed-forward
and model widths prune like hand-written blocks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning import PruningIR
from pruning.verify import equivalence_error, perturb


class EncoderClassifier(nn.Module):
    def __init__(self, norm_first: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(10, 24)
        layer = nn.TransformerEncoderLayer(24, 4, 40, dropout=0.1, activation="gelu", batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(24), enable_nested_tensor=False)
        self.head = nn.Linear(24, 3)

    def forward(self, x, padding):
        return self.head(self.encoder(self.embed(x), src_key_padding_mask=padding)[:, 0])


class Seq2Seq(nn.Module):
    """nn.Transformer with a causal target mask built in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.src, self.tgt = nn.Linear(6, 16), nn.Linear(5, 16)
        self.transformer = nn.Transformer(16, 2, 1, 1, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, src, tgt):
        mask = nn.Transformer.generate_square_subsequent_mask(4)
        return self.head(self.transformer(self.src(src), self.tgt(tgt), tgt_mask=mask))


def _padding():
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    return padding


def _owned(ir: PruningIR) -> list[set[str]]:
    s = ir.snapshot()
    return [set(s.slices(group[0])) for group in s.groups]


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layers_prune_attention_feed_forward_and_width(norm_first):
    torch.manual_seed(0)
    model = perturb(EncoderClassifier(norm_first).eval())
    x, padding = torch.randn(2, 7, 10), _padding()
    ir = PruningIR(model, example_input=(x, padding))
    with torch.no_grad():  # the original takes torch's fused fast path here; the traced model its slow path
        torch.testing.assert_close(ir.model(x, padding), model(x, padding), atol=1e-5, rtol=1e-4)
    owned = _owned(ir)
    assert ir.snapshot().opaque_ops == []
    for i in range(2):
        layer = f"encoder.layers.{i}"
        assert {f"{layer}.linear1.weight", f"{layer}.linear2.weight"} <= next(o for o in owned if f"{layer}.linear1.bias" in o)
        assert any(f"{layer}.self_attn.out_proj.weight" in o for o in owned)  # value features
    assert any({"embed.weight", "encoder.layers.0.norm1.weight", "encoder.norm.weight", "head.weight"} <= o for o in owned)
    s = ir.snapshot()
    exact = [label for group in s.groups for label in group[::3] if not s.analysis.normalized[label.index]]
    assert equivalence_error(ir, exact, x, padding) < 1e-4
    pruned = ir.prune(labels=[label for group in s.groups for label in group[: len(group) // 2]]).model
    assert pruned.get_submodule("encoder.layers.1.linear1").out_features == 20 and pruned.embed.out_features == 12
    out = pruned.train()(x, padding)
    out.square().sum().backward()
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_full_transformer_with_a_causal_mask_prunes_exactly():
    torch.manual_seed(0)
    model = perturb(Seq2Seq().eval())
    src, tgt = torch.randn(2, 6, 6), torch.randn(2, 4, 5)
    ir = PruningIR(model, example_input=(src, tgt))
    with torch.no_grad():
        torch.testing.assert_close(ir.model(src, tgt), model(src, tgt), atol=1e-5, rtol=1e-4)
    owned = _owned(ir)
    assert ir.snapshot().opaque_ops == []
    assert any("transformer.decoder.layers.0.multihead_attn.out_proj.weight" in o for o in owned)
    assert any("transformer.decoder.layers.0.linear1.weight" in o and "transformer.decoder.layers.0.linear2.weight" in o
               for o in owned)
    s = ir.snapshot()
    exact = [label for group in s.groups for label in group[::2] if not s.analysis.normalized[label.index]]
    assert equivalence_error(ir, exact, src, tgt) < 1e-4


def test_a_transformer_layer_given_as_leaf_stays_opaque():
    model = EncoderClassifier(False).eval()
    with pytest.raises(ValueError, match=r"encoder_layers_0 \(torch.nn.modules.transformer.TransformerEncoderLayer\)"):
        PruningIR(model, leaf_modules=[nn.TransformerEncoderLayer], example_input=(torch.randn(2, 7, 10), _padding()))
