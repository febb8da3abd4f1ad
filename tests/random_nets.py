"""Random architectures for property-based tests: a stack of blocks, each one dependency kind."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = ["conv", "residual", "concat", "chunk", "grouped", "depthwise", "shuffle", "se", "slice",
          "layerscale", "channels_last"]


class Block(nn.Module):
    """One block of kind ``kind`` mapping ``cin`` channels to ``self.cout``."""

    def __init__(self, kind: str, cin: int, width: int) -> None:
        super().__init__()
        self.kind = kind
        even = max(2, width - width % 2)
        if kind == "conv":
            self.f = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
            self.cout = width
        elif kind == "residual":
            self.f = nn.Sequential(nn.Conv2d(cin, width, 1), nn.BatchNorm2d(width), nn.SiLU(),
                                   nn.Conv2d(width, cin, 3, padding=1), nn.BatchNorm2d(cin))
            self.cout = cin
        elif kind == "concat":
            self.f = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.ReLU())
            self.cout = cin + width
        elif kind == "chunk":
            self.pre = nn.Conv2d(cin, even, 1)
            self.f = nn.Sequential(nn.Conv2d(even // 2, even // 2, 3, padding=1), nn.BatchNorm2d(even // 2))
            self.cout = even
        elif kind == "grouped":
            groups = 2
            self.pre = nn.Conv2d(cin, 2 * groups * max(1, width // 4), 1)
            mid = self.pre.out_channels
            self.f = nn.Sequential(nn.Conv2d(mid, mid, 3, padding=1, groups=groups), nn.BatchNorm2d(mid), nn.ReLU())
            self.cout = mid
        elif kind == "depthwise":
            self.f = nn.Sequential(nn.Conv2d(cin, 2 * cin, 3, padding=1, groups=cin), nn.BatchNorm2d(2 * cin),
                                   nn.Hardswish())
            self.cout = 2 * cin
        elif kind == "shuffle":
            self.pre = nn.Conv2d(cin, even, 1)
            self.cout = even
        elif kind == "se":
            self.fc1 = nn.Conv2d(cin, max(1, width // 2), 1)
            self.fc2 = nn.Conv2d(max(1, width // 2), cin, 1)
            self.cout = cin
        elif kind == "slice":
            self.pre = nn.Conv2d(cin, width + 2, 1)
            self.cout = width + 2 - 2
        elif kind == "layerscale":
            self.f = nn.Conv2d(cin, cin, 3, padding=1)
            self.gamma = nn.Parameter(torch.rand(cin, 1, 1))
            self.cout = cin
        elif kind == "channels_last":
            self.fc1 = nn.Linear(cin, width)
            self.fc2 = nn.Linear(width, cin)
            self.cout = cin

    def forward(self, x):
        k = self.kind
        if k in ("conv",):
            return self.f(x)
        if k == "residual":
            return F.relu(x + self.f(x))
        if k == "concat":
            return torch.cat([x, self.f(x)], dim=1)
        if k == "chunk":
            a, b = self.pre(x).chunk(2, dim=1)
            return torch.cat([self.f(b), a], dim=1)
        if k in ("grouped",):
            return self.f(self.pre(x))
        if k == "depthwise":
            return self.f(x)
        if k == "shuffle":
            y = self.pre(x)
            n, c, h, w = y.shape
            return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        if k == "se":
            s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
            return x * s
        if k == "slice":
            y = self.pre(x)
            return y[:, 1:-1]
        if k == "layerscale":
            return x + self.gamma * self.f(x)
        if k == "channels_last":
            y = x.permute(0, 2, 3, 1)
            return x + self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        raise AssertionError(k)


class RandomNet(nn.Module):
    """stem conv -> blocks -> global pool or flatten -> linear head."""

    def __init__(self, kinds: list[str], widths: list[int], flatten_head: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        blocks, cin = [], 8
        for kind, width in zip(kinds, widths):
            block = Block(kind, cin, width)
            blocks.append(block)
            cin = block.cout
        self.blocks = nn.Sequential(*blocks)
        self.flatten_head = flatten_head
        self.pool = nn.AdaptiveAvgPool2d(2 if flatten_head else 1)
        self.head = nn.Linear(cin * (4 if flatten_head else 1), 5)

    def forward(self, x):
        x = self.pool(self.blocks(self.stem(x)))
        return self.head(torch.flatten(x, 1))
