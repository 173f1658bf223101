"""Upsampling operators: interpolation, pixel shuffle, transposed convolution, unpooling.

The functions are split by idea: interpolation.py (fixed resampling kernels),
conv_transpose.py (transposed convolution, max unpooling) and this file (pixel
shuffle, ICNR and the modules). Everything public is re-exported here.

Pixel shuffle (Shi et al., ESPCN, arXiv 1609.05158) rearranges channels into space:

    out[n, c, h r + i, w r + j] = in[n, c r^2 + i r + j, h, w]

so a convolution producing C r^2 channels at low resolution followed by a
shuffle is an upsampling layer whose every output pixel has its own kernel
(sub-pixel convolution). Its r^2 kernels per output channel start out
independent, which shows as a checkerboard; ICNR (Aitken et al., arXiv
1707.02937) initialises them as r^2 copies of one kernel, so at initialisation
the layer equals nearest-neighbour resize followed by a convolution.
Resize-convolution (Odena et al. 2016) is that alternative written directly.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ._errors import InvalidShapeError
from .conv_transpose import conv_transpose2d, conv_transpose2d_output_size, conv_transpose2d_reference, max_unpool2d
from .interpolation import MODES, interpolate, interpolate_reference, resize_matrix, resize_taps

__all__ = [
    "interpolate", "interpolate_reference", "resize_taps", "resize_matrix", "MODES",
    "pixel_shuffle", "pixel_unshuffle",
    "conv_transpose2d", "conv_transpose2d_reference", "conv_transpose2d_output_size", "max_unpool2d",
    "icnr_",
    "Upsample", "PixelShuffle", "PixelUnshuffle", "SubPixelConv2d", "ResizeConv2d",
]


def _factor(r, name: str) -> int:
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"{name} must be a positive int, got {r!r}")
    return r


def pixel_shuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """(*, C r^2, H, W) -> (*, C, H r, W r)."""
    r = _factor(r, "pixel_shuffle: r")
    if x.dim() < 3 or x.shape[-3] % (r * r):
        raise InvalidShapeError(f"pixel_shuffle: x must be (*, C*r^2, H, W) with channels divisible by r^2={r * r}, "
                                f"got shape {tuple(x.shape)}")
    *lead, c, h, w = x.shape
    c_out = c // (r * r)
    y = x.reshape(*lead, c_out, r, r, h, w)  # (*, C r^2, H, W) -> (*, C, i, j, H, W)
    n = len(lead)
    y = y.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)  # -> (*, C, H, i, W, j)
    return y.reshape(*lead, c_out, h * r, w * r)  # -> (*, C, H r, W r)


def pixel_unshuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """(*, C, H r, W r) -> (*, C r^2, H, W), the inverse of pixel_shuffle."""
    r = _factor(r, "pixel_unshuffle: r")
    if x.dim() < 3 or x.shape[-2] % r or x.shape[-1] % r:
        raise InvalidShapeError(f"pixel_unshuffle: x must be (*, C, H, W) with H and W divisible by r={r}, "
                                f"got shape {tuple(x.shape)}")
    *lead, c, hr, wr = x.shape
    h, w = hr // r, wr // r
    y = x.reshape(*lead, c, h, r, w, r)  # (*, C, H r, W r) -> (*, C, H, i, W, j)
    n = len(lead)
    y = y.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)  # -> (*, C, i, j, H, W)
    return y.reshape(*lead, c * r * r, h, w)


@torch.no_grad()
def icnr_(weight: torch.Tensor, scale: int, init: Callable[..., torch.Tensor] | None = None,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """ICNR in place: weight (C r^2, C_in, k, k) becomes r^2 copies of one (C, C_in, k, k) kernel.

    Output channel c r^2 + i r + j (sub-pixel (i, j) of channel c after pixel_shuffle) gets kernel c,
    so conv + shuffle starts out as nearest resize + conv. init defaults to kaiming_normal_.
    """
    r = _factor(scale, "icnr_: scale")
    if weight.dim() < 2 or weight.shape[0] % (r * r):
        raise InvalidShapeError(f"icnr_: weight must be (C*r^2, C_in, ...) with C*r^2 divisible by r^2={r * r}, "
                                f"got shape {tuple(weight.shape)}")
    sub = weight.new_empty(weight.shape[0] // (r * r), *weight.shape[1:])
    if init is None:
        nn.init.kaiming_normal_(sub, generator=generator)
    elif generator is not None:
        init(sub, generator=generator)
    else:
        init(sub)
    weight.copy_(sub.repeat_interleave(r * r, dim=0))  # (C, ...) -> (C r^2, ...), each kernel r^2 times
    return weight


class Upsample(nn.Module):
    """Module form of interpolate (same arguments)."""

    def __init__(self, size: int | Sequence[int] | None = None, scale_factor: float | Sequence[float] | None = None,
                 mode: str = "nearest", align_corners: bool | None = None, recompute_scale_factor: bool | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"Upsample: mode must be one of {sorted(MODES)}, got {mode!r}")
        self.size, self.scale_factor, self.mode = size, scale_factor, mode
        self.align_corners, self.recompute_scale_factor = align_corners, recompute_scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners, self.recompute_scale_factor)

    def extra_repr(self) -> str:
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{what}, mode={self.mode!r}" + (f", align_corners={self.align_corners}" if self.align_corners else "")


class PixelShuffle(nn.Module):
    def __init__(self, upscale_factor: int):
        super().__init__()
        self.upscale_factor = _factor(upscale_factor, "PixelShuffle: upscale_factor")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle(x, self.upscale_factor)

    def extra_repr(self) -> str:
        return f"upscale_factor={self.upscale_factor}"


class PixelUnshuffle(nn.Module):
    def __init__(self, downscale_factor: int):
        super().__init__()
        self.downscale_factor = _factor(downscale_factor, "PixelUnshuffle: downscale_factor")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_unshuffle(x, self.downscale_factor)

    def extra_repr(self) -> str:
        return f"downscale_factor={self.downscale_factor}"


class SubPixelConv2d(nn.Module):
    """ESPCN's upsampling layer: conv to C_out r^2 channels at low resolution, then pixel_shuffle.

    (N, C_in, H, W) -> (N, C_out, H r, W r). icnr=True (default) initialises the conv with ICNR.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int = 2, kernel_size: int = 3, bias: bool = True,
                 icnr: bool = True, generator: torch.Generator | None = None):
        super().__init__()
        self.scale = _factor(scale, "SubPixelConv2d: scale")
        if kernel_size % 2 == 0:
            raise ValueError(f"SubPixelConv2d: kernel_size must be odd (for 'same' padding), got {kernel_size}")
        self.conv = nn.Conv2d(in_channels, out_channels * self.scale**2, kernel_size, padding=kernel_size // 2,
                              bias=bias)
        if icnr:
            icnr_(self.conv.weight, self.scale, generator=generator)
            if bias:
                nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle(self.conv(x), self.scale)  # (N, C_in, H, W) -> (N, C_out r^2, H, W) -> (N, C_out, Hr, Wr)


class ResizeConv2d(nn.Module):
    """Resize then convolve (Odena et al. 2016): (N, C_in, H, W) -> (N, C_out, H r, W r), no checkerboard."""

    def __init__(self, in_channels: int, out_channels: int, scale: int = 2, kernel_size: int = 3, bias: bool = True,
                 mode: str = "nearest"):
        super().__init__()
        self.scale = _factor(scale, "ResizeConv2d: scale")
        if kernel_size % 2 == 0:
            raise ValueError(f"ResizeConv2d: kernel_size must be odd (for 'same' padding), got {kernel_size}")
        if mode not in ("nearest", "nearest-exact", "bilinear", "bicubic"):
            raise ValueError(f"ResizeConv2d: mode must be nearest, nearest-exact, bilinear or bicubic, got {mode!r}")
        self.mode = mode
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(interpolate(x, scale_factor=self.scale, mode=self.mode))
