"""ResNet backbones (He et al. 2016) in three forms of the same network:

    "2d"       frames (B, C, H, W): 7x7/2 stem + 3x3/2 max pool, blocks of 3x3 (and 1x1) convs
    "3d"       clips (N, C, T, H, W), inflated: 3x7x7 stem, every 3x3 conv becomes 3x3x3 (r3d)
    "2plus1d"  clips, R(2+1)D (Tran et al. 2018): every t x d x d conv becomes a 1 x d x d spatial conv
               to M channels, BN, ReLU, then a t x 1 x 1 temporal conv, with
                   M = floor(t d^2 N_in N_out / (d^2 N_in + t N_out))
               so the pair has the parameters of the full 3D conv (stem included: t = 3, d = 7).

Depths 10/18/34 use basic blocks (3x3, 3x3) and 50 bottlenecks (1x1, 3x3, 1x1; expansion 4, stride on
the 3x3 as torchvision's v1.5). Stage widths are base_width * (1, 2, 4, 8): 64 is the paper's network
(ResNet-18: 11.69M parameters with a 1000-class head; ResNet-50: 25.56M, ~4.1G multiply-adds at 224^2),
16 or 8 give CPU-sized models. 3D forms keep T (temporal stride 1) unless temporal_strides says otherwise.

Initialisation: Kaiming-normal (fan_out, ReLU) convs, BN gamma 1 / beta 0, and, with
zero_init_residual=True (default), gamma 0 on the last BN of every residual block, so each block
starts as the identity (Goyal et al. 2017). Modules inserted by hooks keep their own initialisation.

Hooks: ``block_hook(spec: BlockSpec) -> BlockHooks | None`` is called once per block. ``pre`` is applied
to the residual branch before conv1 (TSM's shift, TDN's L-TDM), ``mid`` after conv1-BN-ReLU (TAM).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "BlockSpec", "BlockHooks", "DEPTHS", "CONV_KINDS",
           "r2plus1d_mid_channels"]

# depth -> (block kind, blocks per stage)
DEPTHS = {10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3))}
CONV_KINDS = ("2d", "3d", "2plus1d")


def r2plus1d_mid_channels(n_in: int, n_out: int, t: int = 3, d: int = 3) -> int:
    """R(2+1)D's M_i = floor(t d^2 N_{i-1} N_i / (d^2 N_{i-1} + t N_i)): the (2+1)D pair matches 3D's params."""
    return (t * d * d * n_in * n_out) // (d * d * n_in + t * n_out)


@dataclass(frozen=True)
class BlockSpec:
    """What a hook knows about the block it is asked to fill."""
    stage: int  # 0..3 (torchvision's layer1..layer4)
    index: int  # block index inside the stage
    in_channels: int  # channels entering the block (and its residual branch)
    mid_channels: int  # channels after conv1
    out_channels: int


@dataclass
class BlockHooks:
    pre: nn.Module | None = None  # residual branch, before conv1
    mid: nn.Module | None = None  # after conv1 -> BN -> ReLU


class _Convs:
    """Builds the convs, norms and pools of one kind ("2d" | "3d" | "2plus1d")."""

    def __init__(self, kind: str):
        self.kind = kind
        self.three_d = kind != "2d"

    def stride(self, s: int, st: int = 1):
        return (st, s, s) if self.three_d else s

    def bn(self, c: int) -> nn.Module:
        return nn.BatchNorm3d(c) if self.three_d else nn.BatchNorm2d(c)

    def conv1x1(self, cin: int, cout: int, s: int = 1, st: int = 1) -> nn.Module:
        conv = nn.Conv3d if self.three_d else nn.Conv2d
        return conv(cin, cout, 1, stride=self.stride(s, st), bias=False)

    def conv3x3(self, cin: int, cout: int, s: int = 1, st: int = 1) -> nn.Module:
        if self.kind == "2d":
            return nn.Conv2d(cin, cout, 3, stride=s, padding=1, bias=False)
        if self.kind == "3d":
            return nn.Conv3d(cin, cout, 3, stride=(st, s, s), padding=1, bias=False)
        m = r2plus1d_mid_channels(cin, cout, t=3, d=3)
        return nn.Sequential(nn.Conv3d(cin, m, (1, 3, 3), stride=(1, s, s), padding=(0, 1, 1), bias=False),
                             self.bn(m), nn.ReLU(inplace=True),
                             nn.Conv3d(m, cout, (3, 1, 1), stride=(st, 1, 1), padding=(1, 0, 0), bias=False))

    def stem(self, cin: int, cout: int) -> nn.Sequential:
        if self.kind == "2d":
            return nn.Sequential(nn.Conv2d(cin, cout, 7, stride=2, padding=3, bias=False), self.bn(cout),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        if self.kind == "3d":
            return nn.Sequential(nn.Conv3d(cin, cout, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
                                 self.bn(cout), nn.ReLU(inplace=True), pool)
        m = r2plus1d_mid_channels(cin, cout, t=3, d=7)
        return nn.Sequential(nn.Conv3d(cin, m, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
                             self.bn(m), nn.ReLU(inplace=True),
                             nn.Conv3d(m, cout, (3, 1, 1), padding=(1, 0, 0), bias=False),
                             self.bn(cout), nn.ReLU(inplace=True), pool)


def _shortcut(convs: _Convs, cin: int, cout: int, s: int, st: int) -> nn.Module | None:
    """The projection shortcut (1x1 conv with the block's strides, BN) when the shape changes, else None."""
    if s != 1 or st != 1 or cin != cout:
        return nn.Sequential(convs.conv1x1(cin, cout, s, st), convs.bn(cout))
    return None


class BasicBlock(nn.Module):
    """x -> relu(x' + bn2(conv2(mid(relu(bn1(conv1(pre(x)))))))), x' = x or its 1x1 projection."""
    expansion = 1

    def __init__(self, convs: _Convs, cin: int, planes: int, s: int = 1, st: int = 1,
                 hooks: BlockHooks | None = None):
        super().__init__()
        hooks = hooks or BlockHooks()
        cout = planes * self.expansion
        self.pre = hooks.pre or nn.Identity()
        self.conv1, self.bn1 = convs.conv3x3(cin, planes, s, st), convs.bn(planes)
        self.mid = hooks.mid or nn.Identity()
        self.conv2, self.bn2 = convs.conv3x3(planes, cout), convs.bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(convs, cin, cout, s, st)

    @property
    def last_bn(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.mid(self.relu(self.bn1(self.conv1(self.pre(x)))))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """x -> relu(x' + bn3(conv3(relu(bn2(conv2(mid(relu(bn1(conv1(pre(x)))))))))): 1x1, 3x3 (stride), 1x1 (x4)."""
    expansion = 4

    def __init__(self, convs: _Convs, cin: int, planes: int, s: int = 1, st: int = 1,
                 hooks: BlockHooks | None = None):
        super().__init__()
        hooks = hooks or BlockHooks()
        cout = planes * self.expansion
        self.pre = hooks.pre or nn.Identity()
        self.conv1, self.bn1 = convs.conv1x1(cin, planes), convs.bn(planes)
        self.mid = hooks.mid or nn.Identity()
        self.conv2, self.bn2 = convs.conv3x3(planes, planes, s, st), convs.bn(planes)
        self.conv3, self.bn3 = convs.conv1x1(planes, cout), convs.bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(convs, cin, cout, s, st)

    @property
    def last_bn(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.mid(self.relu(self.bn1(self.conv1(self.pre(x)))))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet-{10,18,34,50} as a 2D (B, C, H, W) or 3D (N, C, T, H, W) network.

    forward_features(x) -> (B, F) globally average-pooled features, F = feature_dim = 8 base_width
    (x4 for bottlenecks); forward(x) -> head logits (B, num_classes), when num_classes is given.
    """

    def __init__(self, depth: int = 18, in_channels: int = 3, base_width: int = 64, conv: str = "2d",
                 num_classes: int | None = None, block_hook: Callable[[BlockSpec], BlockHooks | None] | None = None,
                 temporal_strides: tuple[int, int, int, int] = (1, 1, 1, 1), zero_init_residual: bool = True):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth!r}")
        if conv not in CONV_KINDS:
            raise ValueError(f"conv must be one of {CONV_KINDS}, got {conv!r}")
        for name, v in (("in_channels", in_channels), ("base_width", base_width)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if len(temporal_strides) != 4 or any(int(s) < 1 for s in temporal_strides):
            raise ValueError(f"temporal_strides must be 4 positive ints, got {temporal_strides!r}")
        kind, counts = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        convs = _Convs(conv)
        self.depth, self.conv, self.base_width = depth, conv, base_width
        self.stem = convs.stem(in_channels, base_width)
        layers, cin = [], base_width
        for stage, n in enumerate(counts):
            planes = base_width * 2 ** stage
            blocks = []
            for i in range(n):
                s, st = (2 if stage > 0 else 1, int(temporal_strides[stage])) if i == 0 else (1, 1)
                spec = BlockSpec(stage, i, cin, planes, planes * block.expansion)
                hooks = block_hook(spec) if block_hook is not None else None
                blocks.append(block(convs, cin, planes, s, st if convs.three_d else 1, hooks))
                cin = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.ModuleList(layers)
        self.feature_dim = cin
        self.head = nn.Linear(cin, num_classes) if num_classes is not None else None
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        hooked = {id(m) for blk in self.blocks() for h in (blk.pre, blk.mid) for m in h.modules()}
        for m in self.modules():
            if id(m) in hooked:
                continue
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                # torch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as torchvision keeps it
                bound = 1 / math.sqrt(m.in_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.uniform_(m.bias, -bound, bound)
        if zero_init_residual:
            for blk in self.blocks():
                nn.init.zeros_(blk.last_bn.weight)

    def blocks(self) -> list[nn.Module]:
        return [blk for layer in self.layers for blk in layer]

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, [T,] H, W) -> last stage's feature maps (B, F, [T',] H/32, W/32)."""
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return x

    @staticmethod
    def pool(maps: torch.Tensor) -> torch.Tensor:
        """Global average over every dim after the channels: (B, F, ...) -> (B, F)."""
        return maps.flatten(2).mean(-1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        want = 4 if self.conv == "2d" else 5
        if x.dim() != want:
            raise ValueError(f"x must have {want} dims ({'B, C, H, W' if want == 4 else 'N, C, T, H, W'}) "
                             f"for a {self.conv} ResNet, got shape {tuple(x.shape)}")
        return self.pool(self.forward_maps(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise ValueError("this ResNet was built with num_classes=None: use forward_features")
        return self.head(self.forward_features(x))
