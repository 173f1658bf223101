"""Argument checking shared by every attention path.

All paths (reference, CPU blockwise, Triton) take the same arguments:

    q (B, H, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv),  H % Hkv == 0
    mask: bool (True = attend) or additive float, broadcastable to (B, H, Sq, Sk)
    window = (left, right): query i sees keys j with
        i + Sk - Sq - left <= j <= i + Sk - Sq + right     (-1 = unbounded side)
    causal: the same with right = 0 (bottom-right aligned, as flash-attn)

`check_inputs` raises at the boundary (naming the argument, the expected and the
received value) and returns an `AttentionSpec` with every default resolved, so
the kernels never re-derive them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["AttentionSpec", "check_inputs", "compute_dtype", "FLOAT_DTYPES"]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class AttentionSpec:
    """Resolved shapes and options of one attention call."""

    B: int  # batch
    H: int  # query heads
    Hkv: int  # key/value heads (GQA group size G = H // Hkv)
    Sq: int  # query length
    Sk: int  # key length
    D: int  # query/key head dim
    Dv: int  # value head dim
    scale: float  # softmax scale, 1/sqrt(D) by default
    left: int  # window: keys at most `left` before the aligned diagonal, -1 = unbounded
    right: int  # window: keys at most `right` after it, -1 = unbounded (causal -> 0)
    softcap: float  # s -> softcap * tanh(s / softcap) when > 0
    dropout_p: float
    mask: torch.Tensor | None  # 4-D (Bm, Hm, Sqm, Skm), each dim 1 or full; bool or float
    causal: bool

    @property
    def G(self) -> int:
        return self.H // self.Hkv

    @property
    def offset(self) -> int:
        """Sk - Sq: the diagonal query i is aligned to (bottom-right)."""
        return self.Sk - self.Sq

    @property
    def has_structure(self) -> bool:
        return self.left >= 0 or self.right >= 0

    @property
    def bool_mask(self) -> bool:
        return self.mask is not None and self.mask.dtype == torch.bool

    @property
    def additive_mask(self) -> bool:
        return self.mask is not None and self.mask.dtype != torch.bool


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_tensor(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have rank 4 (B, H, S, D), got shape {tuple(x.shape)} (rank {x.dim()})")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be one of {[str(d) for d in FLOAT_DTYPES]}, got {x.dtype}")
    return x


def _check_mask(mask, B: int, H: int, Sq: int, Sk: int, device: torch.device) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"mask must be bool (True = attend) or floating (additive), got {mask.dtype}")
    target = (B, H, Sq, Sk)
    if mask.dim() > 4:
        raise ValueError(f"mask must be broadcastable to (B, H, Sq, Sk) = {target}, got shape {tuple(mask.shape)}")
    shape = (1,) * (4 - mask.dim()) + tuple(mask.shape)
    if any(m not in (1, t) for m, t in zip(shape, target)):
        raise ValueError(f"mask must be broadcastable to (B, H, Sq, Sk) = {target}, got shape {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"mask must be on the device of q ({device}), got {mask.device}")
    return mask.reshape(shape)


def check_inputs(q, k, v, *, causal=False, mask=None, scale=None, window=(-1, -1), softcap=0.0,
                 dropout_p=0.0, generator=None) -> AttentionSpec:
    """Validates one attention call and resolves its defaults."""
    q, k, v = _check_tensor("q", q), _check_tensor("k", k), _check_tensor("v", v)
    B, H, Sq, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"q, k, v must share the batch size: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    Hkv, Sk = k.shape[1], k.shape[2]
    if k.shape[3] != D:
        raise ValueError(f"k head dim must equal q's: expected {D}, got k shape {tuple(k.shape)} "
                         f"(q shape {tuple(q.shape)})")
    if v.shape[1] != Hkv or v.shape[2] != Sk:
        raise ValueError(f"v must have k's heads and length (B, {Hkv}, {Sk}, Dv), got v shape {tuple(v.shape)}")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"q heads must be a multiple of k/v heads (GQA): H={H} (q {tuple(q.shape)}), "
                         f"Hkv={Hkv} (k {tuple(k.shape)})")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must share a device, got {q.device}, {k.device}, {v.device}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    elif not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= -1 for w in window)):
        raise ValueError(f"window must be a pair of ints (left, right), each >= -1 (-1 = unbounded), got {window!r}")
    left, right = int(window[0]), int(window[1])
    if causal:
        right = 0  # causal is the window (left, 0)
    if not isinstance(softcap, (int, float)) or not math.isfinite(softcap) or softcap < 0:
        raise ValueError(f"softcap must be a finite number >= 0 (0 = off), got {softcap!r}")
    if not isinstance(dropout_p, (int, float)) or not (0.0 <= dropout_p < 1.0):
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    mask4 = _check_mask(mask, B, H, Sq, Sk, q.device)
    return AttentionSpec(B=B, H=H, Hkv=Hkv, Sq=Sq, Sk=Sk, D=D, Dv=v.shape[3], scale=float(scale), left=left,
                         right=right, softcap=float(softcap), dropout_p=float(dropout_p), mask=mask4, causal=causal)
