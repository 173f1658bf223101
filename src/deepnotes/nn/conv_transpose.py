"""Transposed convolution and max unpooling: the learned and the remembered upsampling.

Transposed convolution is the adjoint of a strided convolution. Each input pixel
scatters a copy of the kernel, scaled by its value, into the output at stride s:

    out[n, g, o, h s - p + i d, w s - p + j d] += x[n, g, c, h, w] * W[g, c, o, i, j]

    H_out = (H - 1) s - 2 p + d (k - 1) + output_padding + 1

Equivalently (the fast path): insert s - 1 zeros between input pixels, pad by
d (k - 1) - p on each side (plus output_padding at the end; a negative pad crops),
and run an ordinary stride-1 convolution with the kernel flipped and its in/out
channels swapped. Where k is not divisible by s the scattered kernels overlap
unevenly, which is where checkerboard artefacts come from (Odena et al. 2016).

Max unpooling puts each pooled value back at the position max_pool2d recorded
in `indices` (a flat index into each H_out x W_out plane) and zeros elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._errors import InvalidShapeError

__all__ = ["conv_transpose2d", "conv_transpose2d_reference", "conv_transpose2d_output_size", "max_unpool2d"]


def _pair(value, name: str) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def conv_transpose2d_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0,
                                 output_padding: int = 0, dilation: int = 1) -> int:
    """H_out = (H - 1) s - 2 p + d (k - 1) + output_padding + 1."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def _check(x, weight, bias, stride, padding, output_padding, groups, dilation):
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("conv_transpose2d: x and weight must be torch.Tensors")
    if x.dim() not in (3, 4):
        raise InvalidShapeError(f"conv_transpose2d: x must be (N, C_in, H, W) or (C_in, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise InvalidShapeError(f"conv_transpose2d: weight must be (C_in, C_out/groups, kH, kW), got shape "
                                f"{tuple(weight.shape)}")
    s, p, op, d = (_pair(v, n) for v, n in ((stride, "stride"), (padding, "padding"),
                                             (output_padding, "output_padding"), (dilation, "dilation")))
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"conv_transpose2d: groups must be a positive int, got {groups!r}")
    c_in = x.shape[-3]
    if weight.shape[0] != c_in or c_in % groups:
        raise InvalidShapeError(f"conv_transpose2d: weight.shape[0] must equal C_in={c_in} and be divisible by "
                                f"groups={groups}, got weight of shape {tuple(weight.shape)}")
    if min(s) < 1 or min(d) < 1 or min(p) < 0 or min(op) < 0:
        raise ValueError(f"conv_transpose2d: need stride >= 1, dilation >= 1, padding >= 0, output_padding >= 0; "
                         f"got stride={s}, dilation={d}, padding={p}, output_padding={op}")
    for k in range(2):
        if not (op[k] < s[k] or op[k] < d[k]):
            raise ValueError(f"conv_transpose2d: output_padding must be smaller than either stride or dilation, "
                             f"got output_padding={op}, stride={s}, dilation={d}")
    c_out = weight.shape[1] * groups
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise InvalidShapeError(f"conv_transpose2d: bias must have shape ({c_out},), got {tuple(bias.shape)}")
    out = [conv_transpose2d_output_size(x.shape[-2 + k], weight.shape[2 + k], s[k], p[k], op[k], d[k]) for k in range(2)]
    if min(out) < 1:
        raise InvalidShapeError(f"conv_transpose2d: the output would be empty ({out[0]} x {out[1]}) for input "
                                f"{tuple(x.shape[-2:])}, kernel {tuple(weight.shape[2:])}, stride {s}, padding {p}")
    return s, p, op, d


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1) -> torch.Tensor:
    """(N, C_in, H, W) -> (N, C_out, H_out, W_out) as F.conv_transpose2d; weight (C_in, C_out/groups, kH, kW).

    Zero insertion, padding, then a stride-1 convolution with the flipped, transposed kernel.
    """
    s, p, op, d = _check(x, weight, bias, stride, padding, output_padding, groups, dilation)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    N, C, H, W = x.shape
    c_in_g, c_out_g, kh, kw = weight.shape[0] // groups, weight.shape[1], weight.shape[2], weight.shape[3]
    z = x.new_zeros(N, C, (H - 1) * s[0] + 1, (W - 1) * s[1] + 1)
    z[:, :, :: s[0], :: s[1]] = x  # (N, C, H, W) -> zero-inserted (N, C, (H-1)s+1, (W-1)s+1)
    ph, pw = d[0] * (kh - 1) - p[0], d[1] * (kw - 1) - p[1]
    z = F.pad(z, (pw, pw + op[1], ph, ph + op[0]))  # negative pads crop
    # (C_in, C_out/g, kh, kw) -> (g, C_in/g, C_out/g, ..) -> (g, C_out/g, C_in/g, ..) -> (C_out, C_in/g, kh, kw)
    w = weight.reshape(groups, c_in_g, c_out_g, kh, kw).transpose(1, 2).reshape(groups * c_out_g, c_in_g, kh, kw)
    y = F.conv2d(z, w.flip(-2, -1), bias, stride=1, dilation=d, groups=groups)
    return y.squeeze(0) if unbatched else y


def conv_transpose2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1,
                               padding=0, output_padding=0, groups: int = 1, dilation=1) -> torch.Tensor:
    """The scatter definition, one kernel tap at a time: the path conv_transpose2d is tested against."""
    s, p, op, d = _check(x, weight, bias, stride, padding, output_padding, groups, dilation)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    N, C, H, W = x.shape
    c_in_g, c_out_g, kh, kw = weight.shape[0] // groups, weight.shape[1], weight.shape[2], weight.shape[3]
    xg = x.reshape(N, groups, c_in_g, H, W)
    wg = weight.reshape(groups, c_in_g, c_out_g, kh, kw)
    full_h, full_w = (H - 1) * s[0] + d[0] * (kh - 1) + 1, (W - 1) * s[1] + d[1] * (kw - 1) + 1
    full = x.new_zeros(N, groups, c_out_g, full_h, full_w)
    for i in range(kh):
        for j in range(kw):
            tap = torch.einsum("ngchw,gco->ngohw", xg, wg[:, :, :, i, j])  # every pixel times kernel tap (i, j)
            rows = slice(i * d[0], i * d[0] + (H - 1) * s[0] + 1, s[0])
            cols = slice(j * d[1], j * d[1] + (W - 1) * s[1] + 1, s[1])
            full[:, :, :, rows, cols] += tap
    full = full.reshape(N, groups * c_out_g, full_h, full_w)
    y = F.pad(full, (-p[1], op[1] - p[1], -p[0], op[0] - p[0]))  # crop the padding, append output_padding
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y.squeeze(0) if unbatched else y


def max_unpool2d(x: torch.Tensor, indices: torch.Tensor, kernel_size, stride=None, padding=0,
                 output_size=None) -> torch.Tensor:
    """Inverse of max_pool2d(return_indices=True): (N, C, H, W) -> (N, C, H_out, W_out), zeros elsewhere.

    Default H_out = (H - 1) s - 2 p + k; odd sizes need output_size ((H_out, W_out) or the full shape),
    which must lie strictly within one stride of the default, as torch requires.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(indices, torch.Tensor):
        raise TypeError("max_unpool2d: x and indices must be torch.Tensors")
    if x.dim() not in (3, 4):
        raise InvalidShapeError(f"max_unpool2d: x must be (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    if indices.shape != x.shape:
        raise InvalidShapeError(f"max_unpool2d: indices must have the shape of x {tuple(x.shape)}, "
                                f"got {tuple(indices.shape)}")
    if indices.dtype != torch.int64:
        raise TypeError(f"max_unpool2d: indices must be int64 (as max_pool2d returns), got {indices.dtype}")
    k = _pair(kernel_size, "kernel_size")
    s = k if stride is None else _pair(stride, "stride")
    p = _pair(padding, "padding")
    default = [(x.shape[-2 + i] - 1) * s[i] + k[i] - 2 * p[i] for i in range(2)]
    if output_size is None:
        size = default
    else:
        size = [int(v) for v in output_size]
        if len(size) == x.dim():
            size = size[-2:]
        if len(size) != 2:
            raise ValueError(f"max_unpool2d: output_size should be a sequence containing 2 or {x.dim()} elements, "
                             f"got {tuple(output_size)}")
        for i in range(2):
            lo, hi = default[i] - s[i], default[i] + s[i]
            if not lo < size[i] < hi:
                raise ValueError(f"max_unpool2d: invalid output_size {tuple(output_size)} (dim {i} must be "
                                 f"between {lo} and {hi}, exclusive)")
    plane = size[0] * size[1]
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= plane):
        raise ValueError(f"max_unpool2d: indices must lie in [0, {plane}) for output size {tuple(size)}, got "
                         f"range [{int(indices.min())}, {int(indices.max())}]")
    lead = x.shape[:-2]
    flat = x.reshape(*lead, -1)  # (N, C, H*W)
    out = flat.new_zeros(*lead, plane).scatter(-1, indices.reshape(*lead, -1), flat)
    return out.reshape(*lead, *size)
