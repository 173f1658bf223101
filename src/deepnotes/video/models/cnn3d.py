"""3D CNNs on clips (N, C, T, H, W): C3D, the inflated 3D ResNet (r3d) and R(2+1)D.

    r3d       ResNet with every 3x3 conv a 3x3x3 nn.Conv3d (3x7x7 stem). A k_t x k x k conv has k_t times
              the weights and, at temporal stride 1 with 'same' padding, k_t times the multiply-adds of
              its k x k counterpart run on each frame: params(3x3x3) = 3 params(3x3).
    r2plus1d  each 3x3x3 conv factored into 1x3x3 (to M channels), BN, ReLU, 3x1x1 (resnet.py: M formula).
    c3d       Tran et al. 2015: 8 convs 3x3x3 of widths b (1, 2, 4, 4, 8, 8, 8, 8) (b = 64 in the paper),
              max pools 1x2x2 then 2x2x2, two FC layers of width 64 b (4096) and the classifier.
              Differences, to run on any clip size: the last pool + flatten (512x1x4x4 at 16x112^2) is a
              global average pool, so fc6 has 8b inputs (C3D has 78.4M parameters, this one ~46M at
              b = 64); the 2x2x2 pools use ceil_mode so short clips (T < 8) keep at least one frame;
              batch_norm=True (default) adds BN after each conv (mmaction2's norm_cfg option; the
              original has none, and trains poorly from scratch at small widths without it).

The 3D temporal convs are nn.Conv3d with kernel_size[0] == 3 (the temporal-modeling note reads them).
n_segments is the nominal clip length T (kept for build_model's one signature); 3D models accept any T.
Temporal stride is 1 everywhere by default (T is kept to the end), as 2D models keep their T frames.
"""
from __future__ import annotations

import torch
from torch import nn

from .resnet import ResNet

__all__ = ["C3D", "ResNet3D", "R3D", "R2Plus1D"]


def _check_clip(x: torch.Tensor, in_channels: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[1] != in_channels:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a clip batch (N, C={in_channels}, T, H, W), got {got}")


def _check_common(num_classes, n_segments, in_channels, dropout) -> None:
    for name, v in (("num_classes", num_classes), ("n_segments", n_segments), ("in_channels", in_channels)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


class ResNet3D(nn.Module):
    """A 3D ResNet (conv = "3d" | "2plus1d") with a linear head; forward(x (N, C, T, H, W)) -> (N, K)."""
    conv = "3d"

    def __init__(self, num_classes: int, n_segments: int, in_channels: int = 3, depth: int = 18,
                 base_width: int = 64, dropout: float = 0.0, temporal_strides: tuple[int, ...] = (1, 1, 1, 1),
                 zero_init_residual: bool = True):
        super().__init__()
        _check_common(num_classes, n_segments, in_channels, dropout)
        self.num_classes, self.n_segments, self.in_channels = num_classes, n_segments, in_channels
        self.backbone = ResNet(depth, in_channels, base_width, conv=self.conv, temporal_strides=tuple(temporal_strides),
                               zero_init_residual=zero_init_residual)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.feature_dim, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> (N, F) spatio-temporally pooled features."""
        _check_clip(x, self.in_channels)
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))


class R3D(ResNet3D):
    """3D ResNet: 3x3x3 convolutions throughout."""
    conv = "3d"


class R2Plus1D(ResNet3D):
    """R(2+1)D ResNet: (1x3x3, 3x1x1) factored convolutions with R(2+1)D's mid-channel count."""
    conv = "2plus1d"


class C3D(nn.Module):
    """C3D, width-scaled: 8 conv3x3x3 layers, 5 max pools, fc6/fc7 (see the module docstring)."""

    WIDTHS = (1, 2, 4, 4, 8, 8, 8, 8)
    POOL_AFTER = {0: (1, 2, 2), 1: (2, 2, 2), 3: (2, 2, 2), 5: (2, 2, 2)}  # conv index -> pool kernel/stride

    def __init__(self, num_classes: int, n_segments: int, in_channels: int = 3, base_width: int = 64,
                 dropout: float = 0.0, batch_norm: bool = True):
        super().__init__()
        _check_common(num_classes, n_segments, in_channels, dropout)
        if not isinstance(base_width, int) or base_width < 1:
            raise ValueError(f"base_width must be a positive int, got {base_width!r}")
        self.num_classes, self.n_segments, self.in_channels = num_classes, n_segments, in_channels
        layers, cin = [], in_channels
        for i, w in enumerate(self.WIDTHS):
            cout = w * base_width
            layers.append(nn.Conv3d(cin, cout, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm3d(cout))
            layers.append(nn.ReLU(inplace=True))
            if i in self.POOL_AFTER:
                k = self.POOL_AFTER[i]
                layers.append(nn.MaxPool3d(k, stride=k, ceil_mode=True))
            cin = cout
        self.features = nn.Sequential(*layers)
        fc = 64 * base_width
        self.fc = nn.Sequential(nn.Linear(cin, fc), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                nn.Linear(fc, fc), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(fc, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                if m is self.head:
                    nn.init.normal_(m.weight, std=0.01)
                else:  # fc6, fc7 feed ReLUs
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> fc7 activations (N, 64 base_width)."""
        _check_clip(x, self.in_channels)
        maps = self.features(x)
        return self.fc(maps.flatten(2).mean(-1))  # (N, 8b, T', H', W') -> (N, 8b) -> (N, 64b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))
