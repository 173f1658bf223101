"""Resizing by interpolation, with torch.nn.functional.interpolate's semantics.

Every mode is separable. Along one spatial dimension of size n_in -> n_out,

    out[i] = sum_t w[i, t] * x[idx[i, t]]

with a few taps per output (references/fundamentals.md section d; ATen's
UpSample.h). With s the source step (1/scale_factor when a scale factor is
used, else n_in/n_out; (n_in - 1)/(n_out - 1) for align_corners=True), the
source coordinate of output i is

    align_corners=True:  src = s i
    align_corners=False: src = s (i + 1/2) - 1/2   (clamped at 0 for linear, not for cubic)

    nearest        idx = floor(s i)                 ("buggy OpenCV")
    nearest-exact  idx = floor(s (i + 1/2))         (PIL, scikit-image)
    linear         taps floor(src), +1; weights 1 - l, l with l = src - floor(src)
    cubic          taps floor(src) - 1 .. + 2, clamped to the edge; Keys' kernel, A = -0.75
    area           mean over [floor(i n_in/n_out), ceil((i+1) n_in/n_out)): adaptive_avg_pool

Coordinates are computed in the dtype ATen uses (float32 for float32/half/bfloat16
inputs, float64 for float64) so the taps agree with torch's bit for bit.

Two ways to apply the taps, one signature (`fast=`): the reference path gathers
each tap with index_select and sums (readable, used on non-finite inputs too);
the fast path multiplies by the dense (n_out, n_in) matrix built from the same
taps, one GEMM per dimension, and resizes nearest by an integer factor with one
broadcast copy. tests/nn/test_interpolate.py holds the paths equal and both equal to torch.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ._errors import InvalidShapeError, UnsupportedInputError

__all__ = ["interpolate", "interpolate_reference", "resize_taps", "resize_matrix", "MODES", "CUBIC_A"]

# mode -> the input rank it needs (None: any of 3, 4, 5)
MODES: dict[str, int | None] = {"nearest": None, "nearest-exact": None, "area": None, "linear": 3,
                                "bilinear": 4, "bicubic": 4, "trilinear": 5}
CUBIC_A = -0.75  # Keys' cubic convolution parameter, as torch (and OpenCV)
_NO_ALIGN = ("nearest", "nearest-exact", "area")


# --- 1-D taps ---------------------------------------------------------------------------

def _step(n_in: int, n_out: int, scale: float | None, align_corners: bool, dtype: torch.dtype) -> torch.Tensor:
    """ATen's area_pixel_compute_scale: the source distance between neighbouring outputs."""
    if align_corners:
        if n_out <= 1:
            return torch.zeros((), dtype=dtype)
        return torch.tensor(float(n_in - 1), dtype=dtype) / (n_out - 1)
    if scale is not None and scale > 0:
        return torch.tensor(1.0 / scale, dtype=dtype)
    return torch.tensor(float(n_in), dtype=dtype) / torch.tensor(float(n_out), dtype=dtype)


def _cubic_weights(t: torch.Tensor, a: float = CUBIC_A) -> torch.Tensor:
    """Keys' kernel at the four tap distances 1 + t, t, 1 - t, 2 - t: (n,) -> (n, 4)."""

    def near(u):  # |u| <= 1
        return ((a + 2) * u - (a + 3)) * u * u + 1

    def far(u):  # 1 < |u| < 2
        return ((a * u - 5 * a) * u + 8 * a) * u - 4 * a

    return torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=1)


def resize_taps(n_in: int, n_out: int, mode: str, scale: float | None = None, align_corners: bool = False,
                dtype: torch.dtype = torch.float32, spatial_dims: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Taps of a 1-D resize: idx (n_out, T) int64 and weights w (n_out, T); out[i] = sum_t w[i,t] x[idx[i,t]].

    mode: a key of MODES ("linear", "bilinear" and "trilinear" share the linear taps);
    scale: the scale factor passed to torch, or None when the size was given/recomputed;
    dtype: the dtype the coordinates are computed in (float32 unless the input is float64);
    spatial_dims: 1, 2 or 3 (ATen's 2-D nearest kernel alone copies at 1x and halves indices at 2x).
    """
    i = torch.arange(n_out)
    if mode in ("nearest", "nearest-exact"):
        shortcut = mode == "nearest" and spatial_dims == 2  # upsample_nearest2d's nearest_idx
        if shortcut and n_out == n_in:
            idx = i
        elif shortcut and n_out == 2 * n_in:
            idx = i // 2
        else:
            s = _step(n_in, n_out, scale, False, torch.float32)  # float32 whatever the input dtype
            if mode == "nearest":
                src = i.float() * s
            else:  # ATen: floorf((dst + 0.5) * scale) with the product in double
                src = ((i.double() + 0.5) * s.double()).float()
            idx = src.floor().long().clamp(max=max(n_in - 1, 0))
        return idx[:, None], torch.ones(n_out, 1, dtype=dtype)
    if mode == "area":
        start = (i * n_in) // n_out  # floor(i n_in / n_out)
        end = ((i + 1) * n_in + n_out - 1) // n_out  # ceil((i + 1) n_in / n_out)
        taps = int((end - start).max()) if n_out else 1
        idx = start[:, None] + torch.arange(taps)
        valid = idx < end[:, None]
        w = valid.to(dtype) / (end - start)[:, None].to(dtype)
        return idx.clamp(max=max(n_in - 1, 0)), w
    if mode in ("linear", "bilinear", "trilinear"):
        if n_out == n_in:  # ATen copies an unchanged size, whatever the scale factor
            return i[:, None], torch.ones(n_out, 1, dtype=dtype)
        s = _step(n_in, n_out, scale, align_corners, dtype)
        dst = i.to(dtype)
        src = s * dst if align_corners else (s * (dst + 0.5) - 0.5).clamp(min=0)
        i0 = src.floor().long().clamp(max=n_in - 1)
        lam = (src - i0.to(dtype)).clamp(0, 1)
        i1 = i0 + (i0 < n_in - 1).long()
        return torch.stack([i0, i1], dim=1), torch.stack([1 - lam, lam], dim=1)
    if mode == "bicubic":
        s = _step(n_in, n_out, scale, align_corners, dtype)
        dst = i.to(dtype)
        src = s * dst if align_corners else s * (dst + 0.5) - 0.5  # not clamped: cubic reads past the edge
        i0 = src.floor().long().clamp(max=n_in - 1)
        t = (src - i0.to(dtype)).clamp(0, 1)
        idx = (i0[:, None] + torch.arange(-1, 3)).clamp(0, n_in - 1)  # edge taps clamped
        return idx, _cubic_weights(t)
    raise UnsupportedInputError(f"resize_taps: mode must be one of {sorted(MODES)}, got {mode!r}")


def resize_matrix(n_in: int, n_out: int, mode: str, scale: float | None = None, align_corners: bool = False,
                  dtype: torch.dtype = torch.float32, spatial_dims: int = 2) -> torch.Tensor:
    """The (n_out, n_in) matrix M of a 1-D resize (out = M @ x), summed from resize_taps."""
    idx, w = resize_taps(n_in, n_out, mode, scale, align_corners, dtype, spatial_dims)
    return torch.zeros(n_out, n_in, dtype=dtype).scatter_add_(1, idx, w)


# --- argument handling: the checks of F.interpolate, in its order -----------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, torch.Tensor) and not v.is_floating_point())


def _resolve(x, size, scale_factor, mode, align_corners, recompute_scale_factor):
    """-> (output sizes, per-dim scale factors or Nones, align_corners) exactly as F.interpolate decides."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"interpolate: x must be a torch.Tensor, got {type(x).__name__}")
    if mode not in MODES:
        raise UnsupportedInputError(f"interpolate: mode must be one of {sorted(MODES)}, got {mode!r}")
    if mode in _NO_ALIGN:
        if align_corners is not None:
            raise ValueError("interpolate: align_corners option can only be set with the interpolating modes: "
                             f"linear | bilinear | bicubic | trilinear; got align_corners={align_corners} with mode={mode!r}")
    elif align_corners is None:
        align_corners = False
    dim = x.dim() - 2
    if size is not None and scale_factor is not None:
        raise ValueError("interpolate: only one of size or scale_factor should be defined, got both")
    if size is not None:
        sizes = list(size) if isinstance(size, (list, tuple)) else [size] * max(dim, 0)
        if isinstance(size, (list, tuple)) and len(sizes) != dim:
            raise ValueError(f"interpolate: size must have one entry per spatial dimension of x "
                             f"{list(x.shape[2:])}, got size={size}")
        if not all(_is_int(v) for v in sizes):
            raise TypeError(f"interpolate: size must be an int or a tuple of ints, got {size!r}")
        out, scales = [int(v) for v in sizes], [None] * len(sizes)
    elif scale_factor is not None:
        factors = list(scale_factor) if isinstance(scale_factor, (list, tuple)) else [scale_factor] * max(dim, 0)
        if isinstance(scale_factor, (list, tuple)) and len(factors) != dim:
            raise ValueError(f"interpolate: scale_factor must have one entry per spatial dimension of x "
                             f"{list(x.shape[2:])}, got scale_factor={scale_factor}")
        if not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in factors):
            raise TypeError(f"interpolate: scale_factor must be a float or a tuple of floats, got {scale_factor!r}")
        scales = [float(f) for f in factors]
        if not all(math.isfinite(f) for f in scales):
            raise ValueError(f"interpolate: scale_factor must be finite, got scale_factor={scale_factor!r}")
        out = [int(x.shape[2 + k] * scales[k]) for k in range(len(scales))]  # ATen truncates in*scale
    else:
        raise ValueError("interpolate: either size or scale_factor should be defined, got neither")
    if recompute_scale_factor and size is not None:
        raise ValueError("interpolate: recompute_scale_factor is not meaningful with an explicit size")
    if recompute_scale_factor or mode == "area":  # area always resizes by its (recomputed) size
        scales = [None] * len(scales)
    need = MODES[mode]
    if (need is None and not 3 <= x.dim() <= 5) or (need is not None and x.dim() != need):
        want = "3-D, 4-D or 5-D" if need is None else f"{need}-D"
        raise UnsupportedInputError(f"interpolate: mode {mode!r} needs a {want} input (N, C, *spatial), "
                                    f"got a {x.dim()}-D input of shape {tuple(x.shape)}")
    spatial = list(x.shape[2:])
    if mode == "area":
        if any(o < 0 for o in out):
            raise InvalidShapeError(f"interpolate: output size must be >= 0 for area mode, got {out}")
        if any(n == 0 for n in spatial):  # an area of nothing has no mean (adaptive_avg_pool refuses it too)
            raise InvalidShapeError(f"interpolate: area mode needs non-empty spatial dimensions of x, got x of "
                                    f"shape {tuple(x.shape)}")
    elif any(o <= 0 for o in out) or any(n <= 0 for n in spatial):
        raise InvalidShapeError(f"interpolate: input and output sizes should be greater than 0, got input "
                                f"{spatial} and output {out}")
    if mode != "nearest" and mode != "nearest-exact" and not x.is_floating_point():
        raise TypeError(f"interpolate: mode {mode!r} needs a floating-point input, got dtype {x.dtype}")
    return out, scales, align_corners


# --- applying the taps ---------------------------------------------------------------------------

def _gather(x: torch.Tensor, d: int, idx: torch.Tensor, w: torch.Tensor, skip_zero: bool = False) -> torch.Tensor:
    """Reference: out = sum_t w[:, t] * x.index_select(d, idx[:, t]) along dim d.

    skip_zero: a tap of weight 0 adds nothing even when it reads inf/NaN (area mode's padding taps, which
    adaptive pooling never reads); otherwise 0 * inf = NaN, as torch's interpolating kernels give."""
    shape = [1] * x.dim()
    shape[d] = -1
    out = None
    for t in range(idx.shape[1]):
        term = x.index_select(d, idx[:, t])
        if w is not None:
            weight = w[:, t].reshape(shape)
            term = weight * term
            if skip_zero:
                term = torch.where(weight != 0, term, torch.zeros((), dtype=term.dtype))
        out = term if out is None else out + term
    return out


def _matmul(x: torch.Tensor, d: int, m: torch.Tensor) -> torch.Tensor:
    """Fast: contract dim d of x with m (n_out, n_in) by one (batched) GEMM.

    m is banded, so most of the multiply-adds are with zeros; cutting it into blocks that
    touch only their input columns was measured slower (strided operands, a concatenation):
    at these sizes the GEMM is bound by memory traffic, not by FLOPs.
    """
    shape = list(x.shape)
    if d == x.dim() - 1:
        return x @ m.T  # (..., n_in) -> (..., n_out)
    prefix, suffix = math.prod(shape[:d]), math.prod(shape[d + 1:])
    y = torch.matmul(m, x.reshape(prefix, shape[d], suffix))  # (P, n_in, S) -> (P, n_out, S)
    return y.reshape(*shape[:d], m.shape[0], *shape[d + 1:])


class _Repeat(torch.autograd.Function):
    """Nearest by integer factors: out[..., k i + j, ...] = x[..., i, ...], one broadcast copy.

    backward sums the k strided slices per dimension (far faster than autograd's
    reduction over the expanded, non-contiguous dims).
    """

    @staticmethod
    def forward(ctx, x, factors):
        ctx.factors = factors
        view, expand, final = [], [], []
        for d, n in enumerate(x.shape):
            view.append(n)
            expand.append(n)
            final.append(n * factors.get(d, 1))
            if d in factors:
                view.append(1)
                expand.append(factors[d])
        return x.reshape(view).expand(expand).reshape(final)  # (.., n, ..) -> (.., n, k, ..) -> (.., n k, ..)

    @staticmethod
    def backward(ctx, grad):
        for d, k in sorted(ctx.factors.items()):
            parts = [grad[(slice(None),) * d + (slice(j, None, k),)] for j in range(k)]
            grad = parts[0] if k == 1 else torch.stack(parts).sum(0) if k > 2 else parts[0] + parts[1]
        return grad, None


def _resize(x, mode, out, scales, align_corners, fast):
    nearest = mode in ("nearest", "nearest-exact")
    compute = x.dtype if (nearest or x.dtype in (torch.float32, torch.float64)) else torch.float32
    y = x.to(compute)
    coord = torch.float64 if compute == torch.float64 else torch.float32
    dims = [2 + k for k in range(len(out))]
    plans = {d: resize_taps(x.shape[d], out[d - 2], mode, scales[d - 2], align_corners, coord, len(dims))
             for d in dims}
    # A zero in a GEMM row would turn a neighbour's inf/NaN into NaN: non-finite inputs take the gathers.
    # (One sum detects them; a finite sum that overflows only sends the input down the slow path.)
    fast = fast and (nearest or x.numel() == 0 or bool(torch.isfinite(x.detach().sum())))
    if nearest:
        repeats, rest = {}, []
        for d in dims:
            idx, n_in = plans[d][0][:, 0], x.shape[d]
            if len(idx) == n_in and torch.equal(idx, torch.arange(n_in)):
                continue  # unchanged
            k = len(idx) // n_in if n_in else 0
            if fast and k >= 1 and len(idx) == k * n_in and torch.equal(idx, torch.arange(len(idx)) // k):
                repeats[d] = k
            else:
                rest.append(d)
        if repeats:
            y = _Repeat.apply(y, repeats)
        for d in rest:
            idx = plans[d][0][:, 0]
            y = y[(slice(None),) * d + (idx,)] if fast else y.index_select(d, idx)
    else:
        # Shrink first: each GEMM then runs on the smallest tensor it can.
        for d in sorted(dims, key=lambda d: out[d - 2] / x.shape[d]):
            idx, w = plans[d]
            if idx.shape[1] == 1 and torch.equal(idx[:, 0], torch.arange(x.shape[d])) and bool((w == 1).all()):
                continue  # identity
            w = w.to(compute)
            if fast:
                m = torch.zeros(idx.shape[0], x.shape[d], dtype=compute).scatter_add_(1, idx, w)
                y = _matmul(y, d, m)
            else:
                y = _gather(y, d, idx, w, skip_zero=mode == "area")
    y = y.to(x.dtype)
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous(memory_format=torch.channels_last)
    elif x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        y = y.contiguous(memory_format=torch.channels_last_3d)
    return y if y is not x else x.clone()


def interpolate(x: torch.Tensor, size: int | Sequence[int] | None = None,
                scale_factor: float | Sequence[float] | None = None, mode: str = "nearest",
                align_corners: bool | None = None, recompute_scale_factor: bool | None = None) -> torch.Tensor:
    """Resizes (N, C, *spatial) -> (N, C, *size) like F.interpolate (antialias=False).

    size or scale_factor (exactly one); mode: nearest | nearest-exact | linear (3-D) |
    bilinear | bicubic (4-D) | trilinear (5-D) | area; align_corners only for the
    interpolating modes (None means False); recompute_scale_factor=True resizes by
    the output size floor(in * scale_factor) instead of the factor itself.
    """
    out, scales, align = _resolve(x, size, scale_factor, mode, align_corners, recompute_scale_factor)
    return _resize(x, mode, out, scales, align, fast=True)


def interpolate_reference(x: torch.Tensor, size=None, scale_factor=None, mode: str = "nearest",
                          align_corners: bool | None = None, recompute_scale_factor: bool | None = None) -> torch.Tensor:
    """interpolate by explicit tap gathers: the readable path the fast one is tested against."""
    out, scales, align = _resolve(x, size, scale_factor, mode, align_corners, recompute_scale_factor)
    return _resize(x, mode, out, scales, align, fast=False)
