"""Recurrent layers: ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` (any depth, either direction)."""
from __future__ import annotations

import numpy as np
from torch import nn

from ..registry import CONSERVATIVE, Rule, register
from .common import contract


@register(nn.RNN, nn.LSTM, nn.GRU)
class RecurrentModule(Rule):
    """Hidden units and input features of a recurrent layer.

    * The module has one ``hidden_size`` for every layer and direction, so hidden unit ``j`` is one
      label across all of them: its row in each gate block of ``weight_ih``/``weight_hh``/biases and its
      column of ``weight_hh`` (and of the next layer's ``weight_ih``, once per direction).
    * Input features are ``weight_ih_l0``'s columns. The output's features are the last layer's hidden
      units (both directions' halves carry the same labels); ``h_n`` (and LSTM's ``c_n``) carry them in
      their last dim.
    A removed unit whose weights are zero stays zero from the zero initial state, so removing dead units
    is exact. Initial states passed in, and LSTMs with ``proj_size``, are treated as opaque.
    """

    def propagate(self, ctx, node):
        m = ctx.module(node)
        if len(node.args) > 1 or node.kwargs.get("hx") is not None or getattr(m, "proj_size", 0):
            return CONSERVATIVE.propagate(ctx, node)
        value = ctx.value(node.args[0])
        ctx.block_value(value[:-1])
        gates = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[type(m)]
        directions = ("", "_reverse") if m.bidirectional else ("",)
        name = node.target
        hidden = ctx.param_axis(f"{name}.weight_hh_l0", 1)
        below = value[-1]
        for layer in range(m.num_layers):
            for suffix in directions:
                tag = f"l{layer}{suffix}"
                ctx.param_axis(f"{name}.weight_hh_{tag}", 1, hidden)
                contract(ctx, below, ctx.param_axis(f"{name}.weight_ih_{tag}", 1))
                for param in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    if getattr(m, f"{param}_{tag}", None) is not None:
                        ctx.space.merge(ctx.param_axis(f"{name}.{param}_{tag}", 0).reshape(gates, -1), hidden)
            below = np.concatenate([hidden] * len(directions))
        output = tuple(value[:-1]) + (below,)
        state = (None,) * (len(value) - 1) + (hidden,)
        return [output, [state, state] if isinstance(m, nn.LSTM) else state]

    def update_module(self, m):
        m.hidden_size = m.weight_hh_l0.shape[1]
        m.input_size = m.weight_ih_l0.shape[1]
        m._init_flat_weights()
