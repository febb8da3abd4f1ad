"""Traceable forwards for torch.nn's transformer containers.

torch.fx keeps every ``torch.nn`` module as a leaf, and no rule could prune through a whole
``nn.TransformerEncoderLayer``. These containers are compositions of modules the rules know
(``MultiheadAttention``, ``Linear``, ``LayerNorm``, dropout, activations), so the tracer goes inside
them instead. Their own forwards cannot be traced: they branch on tensor properties (``src.dim()``,
``is_nested``, mask values) to pick fused fast paths (``torch._transformer_encoder_layer_fwd``,
nested tensors). The forwards here are the containers' documented slow path, the same math: the
traced (and pruned) model always runs it. Masks are passed on as given (``MultiheadAttention``
canonicalises them itself). ``is_causal`` is only a hint to the attention kernels; when a mask is a
traced input its causality cannot be detected and the hint is False, which is exact (the mask is
still applied).
"""
from __future__ import annotations

from typing import Any, Callable

from torch import fx, nn
from torch.nn.modules.transformer import _detect_is_causal_mask


def _causal_hint(mask: Any, is_causal: bool | None) -> bool:
    if isinstance(mask, fx.Proxy):
        return bool(is_causal)
    return _detect_is_causal_mask(mask, is_causal, None)


def _encoder_layer(self: nn.TransformerEncoderLayer, src, src_mask=None, src_key_padding_mask=None,
                   is_causal=False):
    x = src
    if self.norm_first:
        x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
        return x + self._ff_block(self.norm2(x))
    x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
    return self.norm2(x + self._ff_block(x))


def _encoder(self: nn.TransformerEncoder, src, mask=None, src_key_padding_mask=None, is_causal=None):
    is_causal = _causal_hint(mask, is_causal)
    output = src
    for layer in self.layers:
        output = layer(output, src_mask=mask, is_causal=is_causal, src_key_padding_mask=src_key_padding_mask)
    return output if self.norm is None else self.norm(output)


def _decoder(self: nn.TransformerDecoder, tgt, memory, tgt_mask=None, memory_mask=None,
             tgt_key_padding_mask=None, memory_key_padding_mask=None, tgt_is_causal=None,
             memory_is_causal=False):
    tgt_is_causal = _causal_hint(tgt_mask, tgt_is_causal)
    output = tgt
    for layer in self.layers:
        output = layer(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                       tgt_key_padding_mask=tgt_key_padding_mask,
                       memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                       memory_is_causal=memory_is_causal)
    return output if self.norm is None else self.norm(output)


def _transformer(self: nn.Transformer, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None,
                 src_key_padding_mask=None, tgt_key_padding_mask=None, memory_key_padding_mask=None,
                 src_is_causal=None, tgt_is_causal=None, memory_is_causal=False):
    memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
    return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                        tgt_key_padding_mask=tgt_key_padding_mask,
                        memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                        memory_is_causal=memory_is_causal)


#: Module type -> the forward the tracer follows inside it (None: the module's own forward).
TRACED_FORWARDS: dict[type, Callable | None] = {
    nn.TransformerEncoderLayer: _encoder_layer,
    nn.TransformerEncoder: _encoder,
    nn.TransformerDecoderLayer: None,
    nn.TransformerDecoder: _decoder,
    nn.Transformer: _transformer,
}
