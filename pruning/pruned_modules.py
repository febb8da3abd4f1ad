"""Module classes that pruned models need where torch's own cannot express the pruned shapes."""
from __future__ import annotations

import math

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


def pruned_shifted_window_attention(
    input: torch.Tensor, qkv_weight: torch.Tensor, proj_weight: torch.Tensor,
    relative_position_bias: torch.Tensor, window_size: list[int], num_heads: int, shift_size: list[int],
    attention_dropout: float = 0.0, dropout: float = 0.0, qkv_bias: torch.Tensor | None = None,
    proj_bias: torch.Tensor | None = None, logit_scale: torch.Tensor | None = None, training: bool = True,
    *, qk_head_dim: int, v_head_dim: int, scale: float,
) -> torch.Tensor:
    """torchvision's ``shifted_window_attention`` (Swin v1, and v2 with ``logit_scale``) with the widths
    that pruning makes independent: input channels, query/key features per head (``qk_head_dim``),
    value features per head (``v_head_dim``) and output channels. torchvision derives the head width
    from the input's channel count; here it is given, and ``scale`` is the original
    ``1/sqrt(head_dim)`` (cosine attention does not use it). Same arguments and result otherwise:
    windows of ``window_size`` over a (B, H, W, C) input, or (B, T, H, W, C) with three window sizes (Video
    Swin, ``pruned_shifted_window_attention_3d``), padded to whole windows, cyclically shifted by
    ``shift_size`` with a mask between regions that the shift brought together.
    """
    batch, sizes, k = input.shape[0], input.shape[1:-1], len(window_size)
    x = F.pad(input, [0, 0] + [p for size, window in zip(reversed(sizes), reversed(window_size))
                               for p in (0, -size % window)])
    padded = x.shape[1:-1]
    shift = tuple(0 if window >= size else s for window, size, s in zip(window_size, padded, shift_size))
    axes = tuple(range(1, k + 1))
    if sum(shift) > 0:
        x = torch.roll(x, shifts=tuple(-s for s in shift), dims=axes)
    counts = [size // window for size, window in zip(padded, window_size)]
    tokens = math.prod(window_size)
    windows = _windows(x, counts, window_size).reshape(batch * math.prod(counts), tokens, -1)
    qk_width, v_width = num_heads * qk_head_dim, num_heads * v_head_dim
    if logit_scale is not None and qkv_bias is not None:  # Swin v2 has no key bias
        qkv_bias = torch.cat([qkv_bias[:qk_width], torch.zeros_like(qkv_bias[qk_width:2 * qk_width]),
                              qkv_bias[2 * qk_width:]])
    q, k_, v = (part.reshape(len(windows), tokens, num_heads, -1).transpose(1, 2) for part in
                F.linear(windows, qkv_weight, qkv_bias).split([qk_width, qk_width, v_width], dim=-1))
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k_, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * scale) @ k_.transpose(-2, -1)
    attn = attn + relative_position_bias
    if sum(shift) > 0:
        mask = _shift_mask(padded, window_size, shift, attn)
        attn = attn.view(batch, len(mask), num_heads, tokens, tokens) + mask[None, :, None]
        attn = attn.view(-1, num_heads, tokens, tokens)
    attn = F.dropout(F.softmax(attn, dim=-1), p=attention_dropout, training=training)
    out = (attn @ v).transpose(1, 2).reshape(len(windows), tokens, v_width)
    out = F.dropout(F.linear(out, proj_weight, proj_bias), p=dropout, training=training)
    interleave = [0] + [axis for i in range(k) for axis in (1 + i, 1 + k + i)] + [2 * k + 1]
    out = out.view(batch, *counts, *window_size, -1).permute(interleave).reshape(batch, *padded, -1)
    if sum(shift) > 0:
        out = torch.roll(out, shifts=shift, dims=axes)
    return out[(slice(None), *(slice(0, size) for size in sizes))].contiguous()


def pruned_shifted_window_attention_3d(
    input: torch.Tensor, qkv_weight: torch.Tensor, proj_weight: torch.Tensor,
    relative_position_bias: torch.Tensor, window_size: list[int], num_heads: int, shift_size: list[int],
    attention_dropout: float = 0.0, dropout: float = 0.0, qkv_bias: torch.Tensor | None = None,
    proj_bias: torch.Tensor | None = None, training: bool = True,
    *, qk_head_dim: int, v_head_dim: int, scale: float,
) -> torch.Tensor:
    """torchvision's ``shifted_window_attention_3d`` (Video Swin: a (B, T, H, W, C) input, windows and
    shifts in T, H and W, no cosine attention) with the widths pruning makes independent; its arguments,
    then those of ``pruned_shifted_window_attention``."""
    return pruned_shifted_window_attention(
        input, qkv_weight, proj_weight, relative_position_bias, window_size, num_heads, shift_size,
        attention_dropout, dropout, qkv_bias, proj_bias, None, training,
        qk_head_dim=qk_head_dim, v_head_dim=v_head_dim, scale=scale)


def _windows(x: torch.Tensor, counts: list[int], window_size: list[int]) -> torch.Tensor:
    """(B, *windows, *window_size, C...): ``x`` (B, *padded sizes, C...) cut into whole windows."""
    k = len(window_size)
    split = [size for count, window in zip(counts, window_size) for size in (count, window)]
    order = [0] + [1 + 2 * i for i in range(k)] + [2 + 2 * i for i in range(k)] + list(range(2 * k + 1, x.dim() + k))
    return x.reshape(x.shape[0], *split, *x.shape[k + 1:]).permute(order)


def _shift_mask(padded: tuple[int, ...], window_size: list[int], shift: tuple[int, ...],
                like: torch.Tensor) -> torch.Tensor:
    """(windows, tokens, tokens): -100 between tokens of one window that come from different regions of
    the shifted map (three bands per axis: before the last window, the last window without the shift,
    the shift), 0 within a region."""
    region = torch.zeros((), dtype=torch.long, device=like.device)
    for size, window, offset in zip(padded, window_size, shift):
        band = torch.zeros(size, dtype=torch.long, device=like.device)
        band[size - window:] = 1
        band[size - offset:] = 2
        region = region[..., None] * 3 + band  # mixed radix: one region per combination of bands
    counts = [size // window for size, window in zip(padded, window_size)]
    region = _windows(region[None], counts, window_size).reshape(math.prod(counts), math.prod(window_size))
    different = region[:, None, :] != region[:, :, None]
    return torch.zeros(different.shape, dtype=like.dtype, device=like.device).masked_fill(different, -100.0)