"""TAM / TANet (Liu et al., ICCV 2021): a temporal adaptive module after conv1 of every block.

For x (N*T, C, H, W), per channel the T-vector of spatial means s = mean_{h,w} x, (N, C, T), drives

    local:   a = sigmoid(Conv1d_{C/4->C, k=1}(ReLU(BN(Conv1d_{C->C/4, k=3}(s)))))   (N, C, T) in (0, 1)
    global:  k = softmax(FC_{2T->K}(ReLU(BN(FC_{T->2T}(s)))))                        (N, C, K), K = 3
    out[n, c, t] = sum_j k[n, c, j] (a x)[n, c, t + j - 1]     (zero padded; depthwise per (n, c))

The local gate a re-weights each frame (location-sensitive, order-aware); the global kernel is
video- and channel-specific, non-negative and sums to 1 (a softmax), so on its own it can only
aggregate neighbouring frames (location-invariant). Following TANet's code, the FCs take the whole
T-vector, so T must equal n_segments. In basic blocks (depth 10/18/34) the module sits after conv1
as in the bottleneck; the adaptive temporal conv is a grouped conv2d, so the flop counter sees it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import BlockHooks, BlockSpec
from .tsn import SegmentModel

__all__ = ["TAM", "TANet"]


class TAM(nn.Module):
    """Temporal adaptive module on (N*T, C, H, W) -> (N*T, C, H, W)."""

    def __init__(self, channels: int, n_segments: int, kernel_size: int = 3, reduction: int = 4):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        self.n_segments, self.kernel_size = n_segments, kernel_size
        T, hidden = n_segments, max(1, channels // reduction)
        self.global_branch = nn.Sequential(
            nn.Linear(T, 2 * T, bias=False), nn.BatchNorm1d(2 * T), nn.ReLU(inplace=True),
            nn.Linear(2 * T, kernel_size, bias=False), nn.Softmax(dim=-1))
        self.local_branch = nn.Sequential(
            nn.Conv1d(channels, hidden, 3, padding=1, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Conv1d(hidden, channels, 1, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        NT, C, H, W = x.shape
        T = self.n_segments
        N = NT // T
        x5 = x.view(N, T, C, H, W).transpose(1, 2)  # (N*T, C, H, W) -> (N, C, T, H, W)
        s = x5.mean(dim=(3, 4))  # (N, C, T)
        kernel = self.global_branch(s.reshape(N * C, T))  # (N*C, K)
        gate = self.local_branch(s)  # (N, C, T)
        y = (x5 * gate[..., None, None]).reshape(1, N * C, T, H * W)  # one group per (n, c)
        out = F.conv2d(y, kernel.view(N * C, 1, self.kernel_size, 1), padding=(self.kernel_size // 2, 0),
                       groups=N * C)
        return out.view(N, C, T, H, W).transpose(1, 2).reshape(NT, C, H, W)


class TANet(SegmentModel):
    """TSN + a TAM after conv1 of every residual block."""

    def __init__(self, num_classes: int, n_segments: int, in_channels: int = 3, depth: int = 18,
                 base_width: int = 64, dropout: float = 0.0, kernel_size: int = 3, zero_init_residual: bool = True):
        self.kernel_size = kernel_size  # read by block_hooks while super().__init__ builds the backbone
        super().__init__(num_classes, n_segments, in_channels, depth, base_width, dropout, zero_init_residual)

    def block_hooks(self, spec: BlockSpec) -> BlockHooks:
        return BlockHooks(mid=TAM(spec.mid_channels, self.n_segments, self.kernel_size))
