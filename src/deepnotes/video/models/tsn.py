"""TSN (Wang et al., ECCV 2016): a 2D ResNet on each of T sparsely sampled frames, averaged.

    x (N, C, T, H, W) -> frames (N*T, C, H, W) -> f_t = ResNet(x_t) (N*T, F)
    features = (1/T) sum_t f_t          (N, F)        forward_features
    logits   = W dropout(features) + b  (N, K)        forward

The head is linear, so W mean_t(f_t) + b = mean_t(W f_t + b): averaging pooled features is TSN's
average consensus of per-segment scores, computed once instead of T times. T must equal n_segments.
Average consensus is symmetric in t, so TSN cannot tell a clip from its time reversal.

SegmentModel is the base of every 2D model here (TSN, TSM, TDN, TAM): a subclass changes
``block_hooks(spec)`` to put its temporal module into the ResNet's blocks, and nothing else.
"""
from __future__ import annotations

import torch
from torch import nn

from .resnet import BlockHooks, BlockSpec, ResNet

__all__ = ["SegmentModel", "TSN"]


class SegmentModel(nn.Module):
    """A 2D ResNet over n_segments frames with average consensus; subclasses override block_hooks."""

    def __init__(self, num_classes: int, n_segments: int, in_channels: int = 3, depth: int = 18,
                 base_width: int = 64, dropout: float = 0.0, zero_init_residual: bool = True):
        super().__init__()
        for name, v in (("num_classes", num_classes), ("n_segments", n_segments), ("in_channels", in_channels)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.num_classes, self.n_segments, self.in_channels = num_classes, n_segments, in_channels
        self.backbone = ResNet(depth, in_channels, base_width, conv="2d", block_hook=self.block_hooks,
                               zero_init_residual=zero_init_residual)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.feature_dim, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)  # mmaction2's TSNHead init_std
        nn.init.zeros_(self.head.bias)

    @property
    def frames_per_clip(self) -> int:
        return self.n_segments

    def block_hooks(self, spec: BlockSpec) -> BlockHooks | None:
        """The temporal module(s) of one residual block; None for plain TSN."""
        return None

    def check_input(self, x: torch.Tensor) -> tuple[int, int, int, int, int]:
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a clip batch (N, C, T, H, W), got {got}")
        N, C, T, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"x has C={C} channels, the model was built with in_channels={self.in_channels} "
                             f"(x shape {tuple(x.shape)})")
        if T != self.frames_per_clip:
            raise ValueError(f"x has T={T} frames (shape {tuple(x.shape)}), but this 2D model was built for "
                             f"T = {self.frames_per_clip} (n_segments={self.n_segments})")
        return N, C, T, H, W

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> per-segment pooled features (N, T, F), before the consensus."""
        N, C, T, H, W = self.check_input(x)
        frames = x.transpose(1, 2).reshape(N * T, C, H, W)  # (N, C, T, H, W) -> (N*T, C, H, W)
        return self.backbone.forward_features(frames).view(N, T, -1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> (N, F): the segment average of the per-frame features."""
        return self.frame_features(x).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, H, W) -> logits (N, num_classes)."""
        return self.head(self.dropout(self.forward_features(x)))


class TSN(SegmentModel):
    """Temporal Segment Network: the plain 2D ResNet with average consensus."""
