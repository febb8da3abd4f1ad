"""Latency functions: exact MAC and parameter counts, measured latency restores the model's mode."""
import pytest
import torch
import torch.nn as nn

from pruning.latency import macs, measured_latency, parameters


def test_macs_linear_and_conv_exact():
    assert macs((4, 10))(nn.Linear(10, 20)) == 4 * 10 * 20
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert macs((2, 3, 16, 16))(conv) == 2 * 8 * 16 * 16 * 3 * 9


def test_macs_accepts_tensors_and_restores_mode():
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)).train()
    model[1].eval()
    assert macs(torch.randn(3, 6))(model) == 3 * (6 * 5 + 5 * 2)
    assert model.training and model[0].training and not model[1].training


def test_parameters_counts_shared_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, shared, nn.Linear(4, 2, bias=False))
    assert parameters()(model) == 20 + 8


def test_measured_latency_median_ms_and_mode_restored():
    model = nn.Sequential(nn.Linear(64, 64), nn.Dropout(0.5)).train()
    value = measured_latency((8, 64), warmup=1, repeats=5)(model)
    assert isinstance(value, float) and 0 < value < 1000
    assert model.training
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("bad", [None, "1x3", (), (2.5, 3)])
def test_bad_inputs_named(bad):
    with pytest.raises(ValueError, match="inputs must be"):
        macs(bad)(nn.Linear(3, 3))


def test_measured_latency_bad_repeats():
    with pytest.raises(ValueError, match="repeats=0"):
        measured_latency((1, 3), repeats=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measured_latency_cuda():
    model = nn.Linear(64, 64).cuda()
    assert measured_latency((8, 64), device="cuda", warmup=1, repeats=3)(model) > 0


def test_macs_count_attention_the_same_before_and_after_pruning():
    import copy

    from pruning.pruned_modules import PrunedMultiheadAttention

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    model = Block().eval()
    swapped = copy.deepcopy(model)
    swapped.attn.__class__ = PrunedMultiheadAttention
    swapped.attn.qk_head_dim = swapped.attn.v_head_dim = 8
    swapped.attn.scale = 8 ** -0.5
    x = torch.randn(1, 10, 32)
    count = macs(x)
    projections = 10 * 32 * 32 * 4  # q, k, v and output projections
    attention = 2 * 10 * 10 * 32  # q k^T and attn v over all heads
    assert count(model) == count(swapped) == projections + attention


@pytest.mark.parametrize("layer, tokens", [
    (nn.LSTM(16, 10, batch_first=True), 4 * 5),
    (nn.GRU(16, 10, num_layers=2, bidirectional=True, batch_first=True), 4 * 5),
    (nn.RNN(16, 10), 4 * 5),
    (nn.LSTM(16, 10, proj_size=4, batch_first=True), 4 * 5),
])
def test_macs_count_recurrent_layers_by_their_weight_matrices(layer, tokens):
    # torch's counter sees none of the fused recurrent kernels (CPU: 0 MACs for an LSTM); every weight
    # matrix multiplies one vector per time step and sequence.
    x = torch.randn(4, 5, 16)
    weights = sum(p.shape[0] * p.shape[1] for name, p in layer.named_parameters() if name.startswith("weight_"))
    assert macs(x)(layer) == tokens * weights
    assert macs(x)(nn.Sequential(nn.Linear(16, 16), layer)) == tokens * (weights + 16 * 16)
