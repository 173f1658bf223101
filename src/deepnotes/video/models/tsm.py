"""TSM (Lin et al., ICCV 2019): TSN with a temporal shift on the residual branch of every block.

    block(x) = relu(x' + F(shift(x)))     shift = temporal_shift(., n_segments, fold_div=8)

"blockres" placement: the identity path keeps the unshifted x (shifting in place, identity included,
is worse: PaddleVideo's TSM notes). The shift has no parameters and no multiply-adds, so TSM has
exactly TSN's parameters and FLOPs.

online=True uses the causal one-direction shift (OnlineTemporalShift): frame t sees frames <= t only,
so ``stream(frame)`` can run a video frame by frame with one cache per block, and gives the same
per-frame outputs as the offline model on the whole clip (the online demo of mit-han-lab, which
then smooths the per-frame scores over recent frames; that smoothing is left to the caller).
"""
from __future__ import annotations

import torch

from .resnet import BlockHooks, BlockSpec
from .temporal import OnlineTemporalShift, TemporalShift
from .tsn import SegmentModel

__all__ = ["TSM"]


class TSM(SegmentModel):
    """TSN + residual temporal shift in every block; ``online=True`` for the streaming variant."""

    def __init__(self, num_classes: int, n_segments: int, in_channels: int = 3, depth: int = 18,
                 base_width: int = 64, dropout: float = 0.0, fold_div: int = 8, online: bool = False,
                 zero_init_residual: bool = True):
        if not isinstance(fold_div, int) or fold_div < 2:
            raise ValueError(f"fold_div must be an int >= 2, got {fold_div!r}")
        # plain attributes read by block_hooks while the backbone is built in super().__init__
        self.fold_div, self.online = fold_div, bool(online)
        super().__init__(num_classes, n_segments, in_channels, depth, base_width, dropout, zero_init_residual)

    def block_hooks(self, spec: BlockSpec) -> BlockHooks:
        shift_cls = OnlineTemporalShift if self.online else TemporalShift
        return BlockHooks(pre=shift_cls(self.n_segments, self.fold_div))

    def _online_shifts(self) -> list[OnlineTemporalShift]:
        if not self.online:
            raise ValueError("stream() needs a model built with online=True (a causal shift)")
        return [m for m in self.modules() if isinstance(m, OnlineTemporalShift)]

    def reset_stream(self) -> None:
        """Clears every block's cache: the next stream() call is frame 0 of a new video."""
        for m in self._online_shifts():
            m.reset()

    @torch.no_grad()
    def stream(self, frame: torch.Tensor) -> torch.Tensor:
        """One frame per clip, (N, C, H, W) -> that frame's logits (N, num_classes); caches advance by one."""
        if not isinstance(frame, torch.Tensor) or frame.dim() != 4 or frame.shape[1] != self.in_channels:
            got = tuple(frame.shape) if isinstance(frame, torch.Tensor) else type(frame).__name__
            raise ValueError(f"frame must be (N, {self.in_channels}, H, W), got {got}")
        shifts = self._online_shifts()
        for m in shifts:
            m.streaming = True
        try:
            return self.head(self.backbone.forward_features(frame))
        finally:
            for m in shifts:
                m.streaming = False
