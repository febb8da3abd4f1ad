"""Module classes that pruned models need where torch's own cannot express the pruned shapes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose embedding, query/key and value widths are independent.

    ``nn.MultiheadAttention`` ties the attention width to ``embed_dim``; pruning keeps heads whole in
    number but may shrink the model width (``embed_dim``), the query/key features per head
    (``qk_head_dim``) and the value features per head (``v_head_dim``) separately. ``scale`` keeps
    the original ``1/sqrt(head_dim)`` so that removing dead features changes nothing. The call
    signature and outputs are those of ``nn.MultiheadAttention``.
    """

    qk_head_dim: int
    v_head_dim: int
    scale: float

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if self.batch_first and not unbatched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        length, batch, _ = query.shape
        source = key.shape[0]
        heads, qk, vd = self.num_heads, self.qk_head_dim, self.v_head_dim
        w_q, w_k, w_v = self.in_proj_weight.split([heads * qk, heads * qk, heads * vd])
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.split([heads * qk, heads * qk, heads * vd])
        q = F.linear(query, w_q, b_q).reshape(length, batch, heads, qk).permute(1, 2, 0, 3)
        k = F.linear(key, w_k, b_k).reshape(source, batch, heads, qk).permute(1, 2, 0, 3)
        v = F.linear(value, w_v, b_v).reshape(source, batch, heads, vd).permute(1, 2, 0, 3)
        mask = _additive_mask(attn_mask, key_padding_mask, batch, heads, length, source, q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * self.scale
            if mask is not None:
                scores = scores + mask
            weights = F.dropout(scores.softmax(dim=-1), dropout, self.training)
            out = weights @ v
            weights = weights.mean(dim=1) if average_attn_weights else weights
            if unbatched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale)
        out = out.permute(2, 0, 1, 3).reshape(length, batch, heads * vd)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _additive_mask(attn_mask, key_padding_mask, batch, heads, length, source, dtype):
    """One float mask (batch, heads, length, source) or None, with nn.MultiheadAttention's meaning
    of boolean masks (True = not allowed to attend)."""
    mask = None
    if attn_mask is not None:
        mask = _as_float(attn_mask, dtype)
        mask = mask.view(batch, heads, length, source) if mask.dim() == 3 else mask
    if key_padding_mask is not None:
        padding = _as_float(key_padding_mask, dtype).view(batch, 1, 1, source)
        mask = padding if mask is None else mask + padding
    return mask


def _as_float(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)
