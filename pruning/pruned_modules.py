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
    windows of ``window_size`` over a (B, H, W, C) input padded to whole windows, cyclically shifted
    by ``shift_size`` with a mask between regions that the shift brought together.
    """
    batch, height, width, _ = input.shape
    win_h, win_w = window_size
    x = F.pad(input, (0, 0, 0, -width % win_w, 0, -height % win_h))
    padded_h, padded_w = x.shape[1], x.shape[2]
    shift = (0 if win_h >= padded_h else shift_size[0], 0 if win_w >= padded_w else shift_size[1])
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    rows, cols, tokens = padded_h // win_h, padded_w // win_w, win_h * win_w
    windows = x.view(batch, rows, win_h, cols, win_w, -1).permute(0, 1, 3, 2, 4, 5).reshape(batch * rows * cols, tokens, -1)
    qk_width, v_width = num_heads * qk_head_dim, num_heads * v_head_dim
    if logit_scale is not None and qkv_bias is not None:  # Swin v2 has no key bias
        qkv_bias = torch.cat([qkv_bias[:qk_width], torch.zeros_like(qkv_bias[qk_width:2 * qk_width]),
                              qkv_bias[2 * qk_width:]])
    q, k, v = (part.reshape(len(windows), tokens, num_heads, -1).transpose(1, 2) for part in
               F.linear(windows, qkv_weight, qkv_bias).split([qk_width, qk_width, v_width], dim=-1))
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * scale) @ k.transpose(-2, -1)
    attn = attn + relative_position_bias
    if sum(shift) > 0:
        mask = _shift_mask(padded_h, padded_w, window_size, shift, attn)
        attn = (attn.view(batch, rows * cols, num_heads, tokens, tokens) + mask[None, :, None]).view(-1, num_heads, tokens, tokens)
    attn = F.dropout(F.softmax(attn, dim=-1), p=attention_dropout, training=training)
    out = (attn @ v).transpose(1, 2).reshape(len(windows), tokens, v_width)
    out = F.dropout(F.linear(out, proj_weight, proj_bias), p=dropout, training=training)
    out = out.view(batch, rows, cols, win_h, win_w, -1).permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    if sum(shift) > 0:
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out[:, :height, :width, :].contiguous()


def _shift_mask(padded_h: int, padded_w: int, window_size: list[int], shift: tuple[int, int],
                like: torch.Tensor) -> torch.Tensor:
    """(windows, tokens, tokens): -100 between tokens of one window that come from different regions of
    the shifted map (three bands per axis: before the last window, the last window without the shift,
    the shift), 0 within a region."""
    def bands(size: int, window: int, offset: int) -> torch.Tensor:
        band = torch.zeros(size, dtype=torch.long, device=like.device)
        band[size - window:] = 1
        band[size - offset:] = 2
        return band

    region = bands(padded_h, window_size[0], shift[0])[:, None] * 3 + bands(padded_w, window_size[1], shift[1])[None, :]
    win_h, win_w = window_size
    region = region.view(padded_h // win_h, win_h, padded_w // win_w, win_w).permute(0, 2, 1, 3).reshape(-1, win_h * win_w)
    different = region[:, None, :] != region[:, :, None]
    return torch.zeros(different.shape, dtype=like.dtype, device=like.device).masked_fill(different, -100.0)
