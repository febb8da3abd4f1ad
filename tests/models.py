"""Small hand-written models, each exercising one kind of channel dependency."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.a = conv_bn(16, 24)
        self.b = nn.Sequential(nn.Conv2d(24, 16, 1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.b(self.a(x)))
        return self.head(x.mean((2, 3)))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = conv_bn(3, 8)
        self.b = conv_bn(8, 12)
        self.c = conv_bn(20, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        a = self.a(x)
        x = torch.cat([a, self.b(a)], dim=1)
        return self.head(F.adaptive_avg_pool2d(self.c(x), 1).flatten(1))


class SplitChunk(nn.Module):
    """chunk, split with sizes, and a literal channel slice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.left = conv_bn(16, 16)
        self.mid = conv_bn(8, 8)
        self.right = conv_bn(8, 8)
        self.head = nn.Linear(40, 10)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        c, d = torch.split(b, [8, 8], dim=1)
        e = x[:, :8]
        y = torch.cat([self.left(a), self.mid(c), self.right(d), e], dim=1)
        return self.head(y.mean((2, 3)))


class Shuffle(nn.Module):
    """ShuffleNet-style units: channel split, channel shuffle by view/transpose, and nn.ChannelShuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 24)
        self.branch = nn.Sequential(conv_bn(12, 12), nn.Conv2d(12, 12, 3, padding=1, groups=12),
                                    nn.BatchNorm2d(12), conv_bn(12, 12))
        self.shuffle = nn.ChannelShuffle(3)
        self.out = conv_bn(24, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], dim=1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = self.shuffle(x)
        return self.head(self.out(x).mean((2, 3)))


class Grouped(nn.Module):
    """Grouped and depthwise convolutions, and a GroupNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.grouped = conv_bn(32, 64, groups=4)
        self.depthwise = nn.Conv2d(64, 128, 3, padding=1, groups=64)
        self.norm = nn.GroupNorm(8, 128)
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        x = self.norm(self.depthwise(self.grouped(self.stem(x))))
        return self.head(x.mean((2, 3)))


class Attention(nn.Module):
    """Multi-head self-attention written out: split into heads, q k^T, softmax, merge heads."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(12, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):  # x: (batch, tokens, 12)
        x = self.embed(x)
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(y)
        x = x + self.mlp(x)
        return self.head(x[:, 0])


class SDPA(nn.Module):
    """Attention through F.scaled_dot_product_attention with separate q, k, v projections."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 32), nn.Linear(16, 32), nn.Linear(16, 24)
        self.out = nn.Linear(24, 16)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 2, 16).transpose(1, 2)
        k = self.k(x).view(b, n, 2, 16).transpose(1, 2)
        v = self.v(x).view(b, n, 2, 12).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, 24)
        return self.out(y)


class EinsumAttention(nn.Module):
    """Attention and a channel mix written with einsum: q and k features are contracted together, v's
    reach the output; a '...' operand and a parameter operand (its rows follow the features)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(12, 16), nn.Linear(12, 16), nn.Linear(12, 20)
        self.mix = nn.Parameter(torch.randn(20, 24) / 20 ** 0.5)
        self.head = nn.Linear(24, 6)

    def forward(self, x):  # x: (batch, tokens, 12)
        attn = torch.einsum("bid,bjd->bij", self.q(x), self.k(x)).mul(0.25).softmax(-1)
        y = torch.einsum("bij,bjd->bid", attn, self.v(x))
        return self.head(torch.einsum("...d,de->...e", F.gelu(y), self.mix))


class FunctionalPReLU(nn.Module):
    """F.prelu with a per-channel slope parameter and with one shared slope made in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1)
        self.slope = nn.Parameter(torch.full((8,), 0.2))

    def forward(self, x):
        x = F.prelu(self.conv1(x), self.slope)
        return self.conv3(F.prelu(self.conv2(x), torch.tensor([0.1])))


class PixelShuffles(nn.Module):
    """Space-to-depth and back: pixel_unshuffle spreads a channel over 4, PixelShuffle packs 4 into one;
    a flip of the channel dim, and max-unpooling with the pooling indices."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(24, 16, 1), nn.Conv2d(4, 5, 3, padding=1)
        self.shuffle, self.pool, self.unpool = nn.PixelShuffle(2), nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)
        self.head = nn.Conv2d(5, 4, 1)

    def forward(self, x):
        y = self.shuffle(torch.relu(self.b(F.pixel_unshuffle(self.a(x), 2))))
        y = torch.flip(self.c(y), dims=[1])
        pooled, indices = self.pool(torch.relu(y))
        return self.head(self.unpool(pooled, indices))


class Im2Col(nn.Module):
    """Patches by im2col (nn.Unfold) into a linear over each patch's C*k*k values, back by F.fold (col2im)
    and again by F.unfold, as in timm's TNT and VOLO."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.unfold = nn.Conv2d(3, 4, 3, padding=1), nn.Unfold(2, stride=2)
        self.proj = nn.Linear(16, 12)  # 4 channels x 4 kernel positions -> 3 channels x 4 positions
        self.head = nn.Conv2d(3, 5, 1)
        self.fc = nn.Linear(5 * 4, 2)

    def forward(self, x):
        cols = self.proj(self.unfold(self.a(x)).transpose(1, 2)).transpose(1, 2)
        y = self.head(F.fold(cols, x.shape[-2:], kernel_size=2, stride=2))
        return self.fc(F.unfold(y, (2, 2), stride=2).transpose(1, 2))


class BilinearHead(nn.Module):
    """nn.Bilinear on two projections of the tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(12, 10), nn.Linear(12, 8)
        self.bilinear, self.head = nn.Bilinear(10, 8, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.bilinear(torch.relu(self.a(x)), torch.relu(self.b(x)))))


class Recurrent(nn.Module):
    """A projection into a 2-layer bidirectional LSTM and a GRU; the head reads the last output step and
    the LSTM's final hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 16)
        self.lstm = nn.LSTM(16, 10, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(20, 8, batch_first=True)
        self.head = nn.Linear(8 + 10, 4)

    def forward(self, x):
        out, (h, _) = self.lstm(torch.relu(self.embed(x)))
        seq, _ = self.gru(out)
        return self.head(torch.cat([seq[:, -1], h[-1]], dim=-1))


class TimmStyleBlock(nn.Module):
    """Attention as timm writes it (one reshape into (3, heads, head_dim), unbind), RMSNorm as a module
    and as a function, a layer scale through addcmul, and a head on the norm over tokens."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed, self.norm = nn.Linear(12, dim), nn.RMSNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp1, self.mlp2 = nn.Linear(dim, 32), nn.Linear(32, dim)
        self.gamma, self.scale = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.full((dim,), 0.5))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = ((q @ k.transpose(-2, -1)) * 0.25).softmax(-1) @ v
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, c))
        x = torch.addcmul(x, self.mlp2(F.gelu(self.mlp1(F.rms_norm(x, (c,), self.gamma)))), self.scale)
        return self.head(x.norm(dim=1))


class StdConv(nn.Module):
    """Weight-standardised convolutions (timm's ScaledStdConv): the weight is normalised per output
    channel with F.batch_norm and brought back with reshape_as."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Parameter(torch.randn(8, 3, 3, 3)), nn.Parameter(torch.randn(6, 8, 3, 3))
        self.head = nn.Conv2d(6, 4, 1)

    @staticmethod
    def _standardised(w):
        return F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, training=True, momentum=0.0,
                            eps=1e-5).reshape_as(w)

    def forward(self, x):
        x = torch.relu(F.conv2d(x, self._standardised(self.w1), padding=1))
        return self.head(torch.relu(F.conv2d(x, self._standardised(self.w2), padding=1)))


class FlattenLinear(nn.Module):
    """A flatten of (C, H, W) into a linear layer: each channel owns H*W input columns."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = conv_bn(3, 8)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(8 * 9, 20), nn.ReLU(), nn.Linear(20, 10))

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)))


class ChannelsLast(nn.Module):
    """ConvNeXt-style block: permute to channels-last, LayerNorm and Linear, a layer-scale
    parameter, permute back, and a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 48)
        self.fc2 = nn.Linear(48, 16)
        self.gamma = nn.Parameter(torch.full((16,), 0.5))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.fc2(F.gelu(self.fc1(self.norm(y))))
        x = x + y.permute(0, 3, 1, 2)
        return self.head(x.mean((-2, -1)))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: a per-channel gate multiplies the feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = conv_bn(3, 24)
        self.fc1 = nn.Conv2d(24, 6, 1)
        self.fc2 = nn.Conv2d(6, 24, 1)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = self.conv(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.head((x * s).mean((2, 3)))


IMAGE_MODELS = [Residual, Concat, SplitChunk, Shuffle, Grouped, FlattenLinear, ChannelsLast, SqueezeExcite,
                FunctionalPReLU, PixelShuffles, StdConv, Im2Col]
TOKEN_MODELS = {Attention: (2, 5, 12), SDPA: (2, 5, 16), EinsumAttention: (2, 5, 12), BilinearHead: (2, 5, 12),
                Recurrent: (2, 5, 12), TimmStyleBlock: (2, 5, 12)}


class TorchAttention(nn.Module):
    """A transformer block built on nn.MultiheadAttention (batch_first), as in torchvision's ViT."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.embed(x)
        y, _ = self.attn(x, x, x, need_weights=False)
        x = x + y
        x = x + self.mlp(x)
        return self.head(x[:, 0])


TOKEN_MODELS[TorchAttention] = (2, 5, 12)


def data_dependent_scale(x):
    """Control flow on tensor values: fx cannot trace it."""
    return x * 2 if x.sum() > 0 else x


class CallsUntraceableFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x)))
        return self.head(data_dependent_scale(y))


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = CallsUntraceableFunction()

    def forward(self, x):
        return self.inner(x)
