"""TDN (Wang et al., CVPR 2021): temporal difference modules on a 2D ResNet.

S-TDM (short term, in front of the network). Around each segment's centre frame I_t take a window of
5 frames, stack their 4 differences D_t = [I_2 - I_1, ..., I_5 - I_4] (4C channels), and run
    H(D) = maxpool(ReLU(BN(conv7x7/2(avgpool2(D)))))       (1/8 resolution; conv initialised from the
                                                           channel mean of the RGB conv1, as TDN)
    x_0 = alpha stem(I_t) + beta up(H(D))                  before layer1
    x_1 = alpha layer1(x_0) + beta up(layer1'(H(D)))       after layer1 (layer1' has its own weights)
with alpha = beta = 0.5 (TDN at 8 segments) and nearest upsampling to the RGB path's size.

L-TDM (long term, layers 2-4, on the residual branch before conv1). With f = BN(conv1x1_{C->C/16}(x))
and g = dwconv3x3(f), the bidirectional differences between neighbouring segments
    d+_t = g_{t+1} - f_t (0 at t = T-1),    d-_t = g_{t-1} - f_t (0 at t = 0)
are mixed over three scales, m = (d + up(BN(conv3x3(pool2 d))) + up(BN(conv3x3(pool4 d)))) / 3,
lifted back to C channels, y = BN(conv1x1_{C/16->C}(m)), and gate the features:
    out = x + x (sigmoid(0.5 y+ + 0.5 y-) - 0.5)
then a depthwise temporal conv initialised as the TSM shift (TemporalShiftConv).

Inputs. TDN samples 5 consecutive frames per segment: with clip_len=5 the model takes T = 5 n_segments
(segment-major, the centre frame is the 3rd). With clip_len=1 (the default, T = n_segments, what a
TSN sampler gives) the window of segment t is the 5 *sampled* frames t-2..t+2 (indices clamped at the
ends, so edge differences are 0): the "short-term" differences then span neighbouring segments,
a simplification that keeps one input format for every 2D model here.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import BlockHooks, BlockSpec
from .temporal import TemporalShiftConv
from .tsn import SegmentModel

__all__ = ["LongTermTDM", "ShortTermTDM", "TDN"]

WINDOW = 5  # frames per S-TDM window (4 differences)


def _pool_to(d: torch.Tensor, factor: int) -> torch.Tensor:
    """avg-pool by `factor` (exactly AvgPool2d(factor) when it divides H, W; never below 1x1)."""
    H, W = d.shape[-2:]
    return F.adaptive_avg_pool2d(d, (max(1, H // factor), max(1, W // factor)))


class LongTermTDM(nn.Module):
    """L-TDM on (N*T, C, H, W) -> same shape: bidirectional multi-scale feature-difference gate."""

    def __init__(self, channels: int, n_segments: int, reduction: int = 16):
        super().__init__()
        self.n_segments = n_segments
        c = max(1, channels // reduction)
        self.reduce = nn.Sequential(nn.Conv2d(channels, c, 1, bias=False), nn.BatchNorm2d(c))
        self.dwconv = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.scale2 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.scale4 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.expand = nn.Sequential(nn.Conv2d(c, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def _multiscale(self, d: torch.Tensor) -> torch.Tensor:
        size = d.shape[-2:]
        d2 = F.interpolate(self.scale2(_pool_to(d, 2)), size=size)
        d4 = F.interpolate(self.scale4(_pool_to(d, 4)), size=size)
        return self.expand((d + d2 + d4) / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        NT, C, H, W = x.shape
        T = self.n_segments
        f = self.reduce(x)
        g = self.dwconv(f)
        f5, g5 = f.view(NT // T, T, -1, H, W), g.view(NT // T, T, -1, H, W)  # (N, T, c, H, W)
        d_fwd, d_bwd = torch.zeros_like(f5), torch.zeros_like(f5)
        d_fwd[:, :-1] = g5[:, 1:] - f5[:, :-1]  # g_{t+1} - f_t
        d_bwd[:, 1:] = g5[:, :-1] - f5[:, 1:]  # g_{t-1} - f_t
        y_fwd = self._multiscale(d_fwd.flatten(0, 1))
        y_bwd = self._multiscale(d_bwd.flatten(0, 1))
        gate = torch.sigmoid(0.5 * y_fwd + 0.5 * y_bwd) - 0.5
        return x + x * gate


class ShortTermTDM(nn.Module):
    """S-TDM's difference path: D (B, 4C, H, W) -> H(D) (B, width, H/8, W/8)."""

    def __init__(self, in_channels: int, width: int, rgb_conv1: nn.Conv2d):
        super().__init__()
        self.conv = nn.Conv2d((WINDOW - 1) * in_channels, width, 7, stride=2, padding=3, bias=False)
        with torch.no_grad():  # TDN: the RGB conv1 averaged over its input channels, repeated for 4C
            self.conv.weight.copy_(rgb_conv1.weight.mean(1, keepdim=True).expand_as(self.conv.weight))
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, diffs: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn(self.conv(F.avg_pool2d(diffs, 2, ceil_mode=True)))))


class TDN(SegmentModel):
    """Temporal Difference Network: S-TDM fused before and after layer1, L-TDM in layers 2-4."""

    def __init__(self, num_classes: int, n_segments: int, in_channels: int = 3, depth: int = 18,
                 base_width: int = 64, dropout: float = 0.0, clip_len: int = 1, alpha: float = 0.5,
                 beta: float = 0.5, reduction: int = 16, zero_init_residual: bool = True):
        if clip_len not in (1, WINDOW):
            raise ValueError(f"clip_len must be 1 (window over sampled segments) or {WINDOW} (TDN's "
                             f"5 frames per segment), got {clip_len!r}")
        # plain attributes read by block_hooks while super().__init__ builds the backbone
        self.clip_len, self.alpha, self.beta, self.reduction = clip_len, alpha, beta, reduction
        super().__init__(num_classes, n_segments, in_channels, depth, base_width, dropout, zero_init_residual)
        self.short_term = ShortTermTDM(in_channels, base_width, self.backbone.stem[0])
        self.short_layer1 = copy.deepcopy(self.backbone.layers[0])  # layer1' of the difference path

    @property
    def frames_per_clip(self) -> int:
        return self.n_segments * self.clip_len

    def block_hooks(self, spec: BlockSpec) -> BlockHooks | None:
        if spec.stage == 0:
            return None
        return BlockHooks(pre=nn.Sequential(LongTermTDM(spec.in_channels, self.n_segments, self.reduction),
                                            TemporalShiftConv(spec.in_channels, self.n_segments)))

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> the 5-frame window of every segment (N, n_segments, 5, C, H, W)."""
        N, C, T, H, W = self.check_input(x)
        frames = x.transpose(1, 2)  # (N, T, C, H, W)
        if self.clip_len == WINDOW:
            return frames.reshape(N, self.n_segments, WINDOW, C, H, W)
        t = torch.arange(self.n_segments, device=x.device)
        idx = (t[:, None] + torch.arange(WINDOW, device=x.device) - WINDOW // 2).clamp(0, T - 1)  # (T, 5)
        return frames[:, idx]  # (N, T, 5, C, H, W)

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> per-segment features (N, n_segments, F)."""
        win = self.windows(x)
        N, S, _, C, H, W = win.shape
        centre = win[:, :, WINDOW // 2].reshape(N * S, C, H, W)
        diffs = (win[:, :, 1:] - win[:, :, :-1]).reshape(N * S, (WINDOW - 1) * C, H, W)  # (N*S, 4C, H, W)
        d0 = self.short_term(diffs)
        d1 = self.short_layer1(d0)
        bb = self.backbone
        h = bb.stem(centre)
        h = self.alpha * h + self.beta * F.interpolate(d0, size=h.shape[-2:])
        h = bb.layers[0](h)
        h = self.alpha * h + self.beta * F.interpolate(d1, size=h.shape[-2:])
        for layer in bb.layers[1:]:
            h = layer(h)
        return bb.pool(h).view(N, S, -1)
