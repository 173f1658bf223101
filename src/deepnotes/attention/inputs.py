"""Argument checking shared by every attention path.

All paths (reference, CPU blockwise, Triton) take the same arguments:

    q (B, H, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv),  H % Hkv == 0
    mask: bool (True = attend) or additive float, broadcastable to (B, H, Sq, Sk)
    window = (left, right): query i sees keys j with
        i + Sk - Sq - left <= j <= i + Sk - Sq + right     (-1 = unbounded side)
    causal: the same with right = 0 (bottom-right aligned, as flash-attn)
    alibi_slopes: (H,) or (B, H) floats, bias -slope * |i + Sk - Sq - j| (alibi.py)

The packed variable-length layout (varlen.py) is checked by `check_varlen`:

    q (Tq, H, D), k (Tk, Hkv, D), v (Tk, Hkv, Dv)
    cu_seqlens_q (B + 1,) int: 0 = cu[0] <= cu[1] <= ... <= cu[B] = Tq  (cu_seqlens_k: Tk)
    sequence b is q[cu_q[b]:cu_q[b+1]] against k, v[cu_k[b]:cu_k[b+1]]

`check_inputs` raises at the boundary (naming the argument, the expected and the
received value) and returns an `AttentionSpec` with every default resolved, so
the kernels never re-derive them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["AttentionSpec", "VarlenSpec", "check_inputs", "check_varlen", "check_alibi_slopes", "compute_dtype",
           "FLOAT_DTYPES"]

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
    alibi: torch.Tensor | None = None  # ALiBi slopes (Bs, H), Bs in {1, B}; no gradient (as flash-attn)

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


def check_alibi_slopes(alibi_slopes, B: int, H: int, device: torch.device) -> torch.Tensor | None:
    """alibi_slopes (H,) or (B, H), floating, on q's device -> (1, H) or (B, H); None stays None."""
    if alibi_slopes is None:
        return None
    if not isinstance(alibi_slopes, torch.Tensor):
        raise TypeError(f"alibi_slopes must be a torch.Tensor of shape (H,) or (B, H) or None, "
                        f"got {type(alibi_slopes).__name__}")
    if not alibi_slopes.is_floating_point():
        raise TypeError(f"alibi_slopes must be floating (float32 as flash-attn), got {alibi_slopes.dtype}")
    shape = tuple(alibi_slopes.shape)
    if shape not in ((H,), (B, H)):
        raise ValueError(f"alibi_slopes must have shape (H,) = ({H},) or (B, H) = ({B}, {H}), got {shape}")
    if alibi_slopes.device != device:
        raise ValueError(f"alibi_slopes must be on the device of q ({device}), got {alibi_slopes.device}")
    if alibi_slopes.requires_grad:
        raise ValueError("alibi_slopes must not require grad: the kernels treat the slopes as constants "
                         "(as flash-attn) and would drop their gradient; pass alibi_slopes.detach()")
    return alibi_slopes.reshape(-1, H)


def _check_qkv_shapes(q, k, v, B: int, H: int, D: int, Hkv: int, Sk: int, layout: str) -> None:
    if k.shape[-1] != D:
        raise ValueError(f"k head dim must equal q's: expected {D}, got k shape {tuple(k.shape)} "
                         f"(q shape {tuple(q.shape)})")
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v must have k's heads and length {layout.replace('Hkv', str(Hkv)).replace('Sk', str(Sk))},"
                         f" got v shape {tuple(v.shape)}")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"q heads must be a multiple of k/v heads (GQA): H={H} (q {tuple(q.shape)}), "
                         f"Hkv={Hkv} (k {tuple(k.shape)})")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must share a device, got {q.device}, {k.device}, {v.device}")


def check_inputs(q, k, v, *, causal=False, mask=None, scale=None, window=(-1, -1), softcap=0.0,
                 dropout_p=0.0, generator=None, alibi_slopes=None) -> AttentionSpec:
    """Validates one attention call and resolves its defaults."""
    q, k, v = _check_tensor("q", q), _check_tensor("k", k), _check_tensor("v", v)
    B, H, Sq, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"q, k, v must share the batch size: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    Hkv, Sk = k.shape[1], k.shape[2]
    _check_qkv_shapes(q, k, v, B, H, D, Hkv, Sk, "(B, Hkv, Sk, Dv)")
    opts = _check_options(D, causal, scale, window, softcap, dropout_p, generator)
    mask4 = _check_mask(mask, B, H, Sq, Sk, q.device)
    alibi = check_alibi_slopes(alibi_slopes, B, H, q.device)
    return AttentionSpec(B=B, H=H, Hkv=Hkv, Sq=Sq, Sk=Sk, D=D, Dv=v.shape[3], mask=mask4, alibi=alibi, **opts)


def _check_options(D, causal, scale, window, softcap, dropout_p, generator) -> dict:
    """The keyword options shared by the batched and the varlen entry points, resolved."""
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
    return dict(scale=float(scale), left=left, right=right, softcap=float(softcap), dropout_p=float(dropout_p),
                causal=causal)


@dataclass(frozen=True)
class VarlenSpec:
    """A packed variable-length call: B sequences, each an AttentionSpec with batch 1."""

    cu_q: tuple[int, ...]  # (B + 1,) query offsets into the packed rows
    cu_k: tuple[int, ...]  # (B + 1,) key offsets
    Tq: int  # total query tokens
    Tk: int  # total key tokens
    seqs: tuple[AttentionSpec, ...]  # one per sequence (B = 1, its own Sq, Sk, alibi row)

    @property
    def B(self) -> int:
        return len(self.seqs)


def _check_cu(name: str, cu, total: int, total_name: str, device) -> tuple[int, ...]:
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B + 1,) of int32/int64, got {type(cu).__name__}")
    if cu.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int32 or int64, got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 1:
        raise ValueError(f"{name} must be 1-D of length B + 1 >= 1, got shape {tuple(cu.shape)}")
    if cu.device != device:
        raise ValueError(f"{name} must be on the device of q ({device}), got {cu.device}")
    vals = [int(x) for x in cu.tolist()]
    if vals[0] != 0:
        raise ValueError(f"{name} must start at 0, got {name}[0] = {vals[0]}")
    if any(b < a for a, b in zip(vals, vals[1:])):
        raise ValueError(f"{name} must be non-decreasing (sequence lengths >= 0), got {vals}")
    if vals[-1] != total:
        raise ValueError(f"{name} must end at the number of packed tokens {total_name} = {total}, "
                         f"got {name}[-1] = {vals[-1]}")
    return tuple(vals)


def _check_max_seqlen(name: str, value, lengths: list[int]) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    longest = max(lengths, default=0)
    if value < longest:
        raise ValueError(f"{name} must be >= the longest sequence ({longest}), got {value}")


def _check_packed(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have rank 3 (total_tokens, H, D), got shape {tuple(x.shape)} "
                         f"(rank {x.dim()})")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be one of {[str(d) for d in FLOAT_DTYPES]}, got {x.dtype}")
    return x


def check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False, scale=None,
                 window=(-1, -1), softcap=0.0, alibi_slopes=None, dropout_p=0.0, generator=None) -> VarlenSpec:
    """Validates one packed variable-length call (flash_attn_varlen_func's layout)."""
    q, k, v = _check_packed("q", q), _check_packed("k", k), _check_packed("v", v)
    Tq, H, D = q.shape
    Tk, Hkv = k.shape[0], k.shape[1]
    _check_qkv_shapes(q, k, v, 1, H, D, Hkv, Tk, "(Tk, Hkv, Dv)")
    cu_q = _check_cu("cu_seqlens_q", cu_seqlens_q, Tq, "Tq = q.shape[0]", q.device)
    cu_k = _check_cu("cu_seqlens_k", cu_seqlens_k, Tk, "Tk = k.shape[0]", q.device)
    if len(cu_q) != len(cu_k):
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same length B + 1, got {len(cu_q)} "
                         f"and {len(cu_k)}")
    B = len(cu_q) - 1
    len_q = [b - a for a, b in zip(cu_q, cu_q[1:])]
    len_k = [b - a for a, b in zip(cu_k, cu_k[1:])]
    _check_max_seqlen("max_seqlen_q", max_seqlen_q, len_q)
    _check_max_seqlen("max_seqlen_k", max_seqlen_k, len_k)
    opts = _check_options(D, causal, scale, window, softcap, dropout_p, generator)
    alibi = check_alibi_slopes(alibi_slopes, B, H, q.device)
    seqs = tuple(AttentionSpec(B=1, H=H, Hkv=Hkv, Sq=len_q[b], Sk=len_k[b], D=D, Dv=v.shape[2], mask=None,
                               alibi=None if alibi is None else alibi[b if alibi.shape[0] > 1 else 0][None],
                               **opts) for b in range(B))
    return VarlenSpec(cu_q=cu_q, cu_k=cu_k, Tq=Tq, Tk=Tk, seqs=seqs)
