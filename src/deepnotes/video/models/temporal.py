"""Temporal shift (TSM, Lin et al. 2019, arXiv 1811.08383): zero-parameter, zero-FLOP temporal mixing.

Frames of N clips arrive folded into the batch, x of shape (N*T, C, H, W). With f = C // fold_div:

    y[t, c] = x[t+1, c]   for c in [0, f)        (zero at t = T-1)
    y[t, c] = x[t-1, c]   for c in [f, 2f)       (zero at t = 0)
    y[t, c] = x[t, c]     for c >= 2f

A quarter of the channels move (fold_div = 8). The shift is linear, and its adjoint is the opposite
shift (first fold takes t-1, second takes t+1), which is therefore its backward pass.

The same map is a depthwise Conv1d over time with kernel size 3 and one-hot kernels
(cross-correlation, padding 1): [0, 0, 1] on the first fold, [1, 0, 0] on the second, [0, 1, 0] on the
rest (``shift_conv_weight``); TDN initialises its learnable temporal conv that way (TemporalShiftConv).

Online TSM shifts one way only, so frame t never sees frame t+1 and a clip can be processed as it
streams in: the first f channels take frame t-1 (zero at t = 0), the rest stay (``unidirectional_shift``).
OnlineTemporalShift does this offline on (N*T, C, H, W), or, with ``streaming = True``, one frame at a
time (N, C, H, W) with a cache holding the previous frame's first f channels (zeros at the start), as
mit-han-lab's online demo does in each block.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["temporal_shift", "unidirectional_shift", "shift_conv_weight", "TemporalShift",
           "OnlineTemporalShift", "TemporalShiftConv"]


def _check(x: torch.Tensor, n_segments: int, fold_div: int) -> tuple[int, int]:
    """Validates the arguments; returns (N, fold)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor (N*T, C, ...) with at least 2 dims, got {got}")
    if not isinstance(n_segments, int) or n_segments < 1:
        raise ValueError(f"n_segments must be a positive int, got {n_segments!r}")
    if not isinstance(fold_div, int) or fold_div < 2:
        raise ValueError(f"fold_div must be an int >= 2, got {fold_div!r}")
    if x.shape[0] % n_segments:
        raise ValueError(f"x's first dim must be N*T with T = n_segments = {n_segments}, got shape {tuple(x.shape)}")
    return x.shape[0] // n_segments, x.shape[1] // fold_div


def _shift(x: torch.Tensor, n_segments: int, fold: int, sign: int) -> torch.Tensor:
    """Out-of-place bidirectional shift; sign = +1 is TSM's (first fold takes t+1), -1 its adjoint."""
    x5 = x.unflatten(0, (-1, n_segments))  # (N*T, C, ...) -> (N, T, C, ...)
    out = torch.zeros_like(x5)
    a, b = (slice(0, fold), slice(fold, 2 * fold)) if sign > 0 else (slice(fold, 2 * fold), slice(0, fold))
    out[:, :-1, a] = x5[:, 1:, a]  # takes t+1
    out[:, 1:, b] = x5[:, :-1, b]  # takes t-1
    out[:, :, 2 * fold:] = x5[:, :, 2 * fold:]
    return out.flatten(0, 1)


class _InplaceShift(torch.autograd.Function):
    """TSM's shift written into x's own memory, with a buffer of one fold (T-1 frames) at a time.

    The backward pass is the adjoint, the opposite shift (out of place: autograd may share grad_output).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, n_segments: int, fold: int) -> torch.Tensor:
        ctx.n_segments, ctx.fold = n_segments, fold
        ctx.mark_dirty(x)
        if fold == 0 or n_segments == 1:
            if fold:
                x[:, : 2 * fold].zero_()
            return x
        x5 = x.unflatten(0, (-1, n_segments))  # a view: (N*T, C, ...) -> (N, T, C, ...)
        buffer = x5[:, 1:, :fold].clone()  # first fold takes t+1
        x5[:, :-1, :fold] = buffer
        x5[:, -1, :fold] = 0
        buffer.copy_(x5[:, :-1, fold:2 * fold])  # second fold takes t-1
        x5[:, 1:, fold:2 * fold] = buffer
        x5[:, 0, fold:2 * fold] = 0
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _shift(grad, ctx.n_segments, ctx.fold, sign=-1), None, None


def temporal_shift(x: torch.Tensor, n_segments: int, fold_div: int = 8, inplace: bool = False) -> torch.Tensor:
    """TSM's bidirectional shift of (N*T, C, ...) -> same shape (see the module docstring).

    inplace=True overwrites x (which must not be a leaf that requires grad) and returns it; it is held
    equal to the out-of-place version, forward and backward, by the tests.
    """
    _, fold = _check(x, n_segments, fold_div)
    if inplace:
        return _InplaceShift.apply(x, n_segments, fold)
    return _shift(x, n_segments, fold, sign=+1)


def unidirectional_shift(x: torch.Tensor, n_segments: int, fold_div: int = 8) -> torch.Tensor:
    """Online TSM's causal shift of (N*T, C, ...): the first C//fold_div channels take frame t-1 (zero at t=0)."""
    _, fold = _check(x, n_segments, fold_div)
    x5 = x.unflatten(0, (-1, n_segments))  # (N*T, C, ...) -> (N, T, C, ...)
    out = x5.clone()
    out[:, 1:, :fold] = x5[:, :-1, :fold]
    out[:, 0, :fold] = 0
    return out.flatten(0, 1)


def shift_conv_weight(channels: int, fold_div: int = 8) -> torch.Tensor:
    """(C, 1, 3) one-hot kernels of the depthwise temporal Conv1d (padding 1) equal to temporal_shift."""
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if not isinstance(fold_div, int) or fold_div < 2:
        raise ValueError(f"fold_div must be an int >= 2, got {fold_div!r}")
    fold = channels // fold_div
    w = torch.zeros(channels, 1, 3)
    w[:fold, 0, 2] = 1  # y_t = x_{t+1}
    w[fold:2 * fold, 0, 0] = 1  # y_t = x_{t-1}
    w[2 * fold:, 0, 1] = 1  # y_t = x_t
    return w


class TemporalShift(nn.Module):
    """temporal_shift as a module: (N*T, C, H, W) -> (N*T, C, H, W); no parameters, no FLOPs."""

    def __init__(self, n_segments: int, fold_div: int = 8, inplace: bool = False):
        super().__init__()
        self.n_segments, self.fold_div, self.inplace = n_segments, fold_div, inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return temporal_shift(x, self.n_segments, self.fold_div, self.inplace)

    def extra_repr(self) -> str:
        return f"n_segments={self.n_segments}, fold_div={self.fold_div}, inplace={self.inplace}"


class OnlineTemporalShift(nn.Module):
    """Causal one-direction shift; offline on (N*T, C, H, W), or frame by frame with a cache.

    streaming = False: unidirectional_shift(x, n_segments, fold_div).
    streaming = True:  x is one frame per clip, (N, C, H, W); the first C//fold_div channels are replaced
    by the cached ones of the previous call (zeros after ``reset()``), and the cache takes this frame's.
    Run over t = 0..k-1 this reproduces unidirectional_shift of the k-frame prefix, frame by frame.
    """

    def __init__(self, n_segments: int, fold_div: int = 8):
        super().__init__()
        self.n_segments, self.fold_div = n_segments, fold_div
        self.streaming = False
        self.cache: torch.Tensor | None = None  # not a buffer: streaming state, not a parameter

    def reset(self) -> None:
        self.cache = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.streaming:
            return unidirectional_shift(x, self.n_segments, self.fold_div)
        _, fold = _check(x, 1, self.fold_div)
        if self.cache is not None and self.cache.shape != x[:, :fold].shape:
            raise ValueError(f"streamed frame {tuple(x.shape)} does not match the cached frames "
                             f"{tuple(self.cache.shape)}; call reset() between streams")
        out = x.clone()
        out[:, :fold] = 0 if self.cache is None else self.cache
        self.cache = x[:, :fold].detach().clone()
        return out

    def extra_repr(self) -> str:
        return f"n_segments={self.n_segments}, fold_div={self.fold_div}, streaming={self.streaming}"


class TemporalShiftConv(nn.Module):
    """Learnable depthwise temporal Conv1d (k = 3) over (N*T, C, H, W), initialised as temporal_shift.

    TDN's ShiftModule: it starts as the TSM shift and is free to learn other temporal kernels.
    """

    def __init__(self, channels: int, n_segments: int, fold_div: int = 8):
        super().__init__()
        self.n_segments = n_segments
        self.conv = nn.Conv1d(channels, channels, 3, padding=1, groups=channels, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(shift_conv_weight(channels, fold_div))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        NT, C, H, W = x.shape
        T = self.n_segments
        x5 = x.view(NT // T, T, C, H, W)
        seq = x5.permute(0, 3, 4, 2, 1).reshape(-1, C, T)  # (N, T, C, H, W) -> (N*H*W, C, T)
        y = self.conv(seq)
        return y.view(NT // T, H, W, C, T).permute(0, 4, 3, 1, 2).reshape(NT, C, H, W)
