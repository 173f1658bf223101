"""Attention over packed variable-length sequences, as flash-attn's flash_attn_varlen_func.

A batch of B sequences of different lengths is packed along the token axis,
with no padding:

    q (Tq, H, D), k (Tk, Hkv, D), v (Tk, Hkv, Dv),  Tq = sum_b Sq_b,  Tk = sum_b Sk_b
    cu_seqlens_q = (0, Sq_0, Sq_0 + Sq_1, ..., Tq)   (int32 as flash-attn, or int64)
    sequence b:  q[cu_q[b]:cu_q[b+1]] attends to k, v[cu_k[b]:cu_k[b+1]] and nothing else

    O[cu_q[b] + i] = flash_attention(q_b, k_b, v_b)[i]   for every b, with the same keywords

so causal and windows are aligned bottom-right *per sequence* (query i of
sequence b sees keys j <= i + Sk_b - Sq_b), ALiBi slopes are (H,) or (B, H),
and GQA needs H % Hkv == 0. LSE comes back as (H, Tq), flash-attn's varlen
layout. max_seqlen_q/k must be at least the longest sequence (flash-attn
sizes its grid with them; here they are checked, and used by the Triton
kernel's grid).

The blockwise kernel runs each sequence as its own problem (blockwise.py),
with its own tile map, all problems' tiles in one parallel loop: a tile never
crosses a sequence boundary, so no padding is computed and no (Tq, Tk) mask
exists. Dropout draws Z at the packed coordinates (h, cu_q[b] + i, cu_k[b] + j)
from one seed per call, so sequences get independent masks and
attention_reference_varlen (reference.py) reproduces them.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .blockwise import Problem, backward_problems, check_block_sizes, forward_problems, lse_from_stats
from .dropout import draw_seed
from .inputs import VarlenSpec, check_varlen, compute_dtype
from .tiles import LN2, LOG2E, DropoutCoords, Tiles, plan_tiles

__all__ = ["flash_attention_varlen", "blockwise_attention_varlen"]


def flash_attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *,
                           causal: bool = False, scale: float | None = None, window: tuple[int, int] = (-1, -1),
                           softcap: float = 0.0, alibi_slopes: torch.Tensor | None = None, dropout_p: float = 0.0,
                           generator: torch.Generator | None = None, return_lse: bool = False):
    """Exact attention per packed sequence. q (Tq, H, D), k (Tk, Hkv, D), v (Tk, Hkv, Dv) -> O (Tq, H, Dv)
    in q's dtype; with return_lse also LSE (H, Tq) in float32 (float64 for float64 inputs).

    cu_seqlens_q/k (B + 1,) int32/int64 offsets; the keywords are flash_attention's (causal
    bottom-right per sequence, window, softcap, ALiBi (H,) or (B, H), dropout). CUDA tensors run the
    Triton kernel unless dropout is asked for; everything else runs the blockwise kernel."""
    vspec = check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
                         scale=scale, window=window, softcap=softcap, alibi_slopes=alibi_slopes,
                         dropout_p=dropout_p, generator=generator)
    if q.is_cuda and k.is_cuda and v.is_cuda:
        from . import triton_kernel

        if triton_kernel.supports_varlen(q, k, v, dropout_p=dropout_p):
            return triton_kernel.triton_attention_varlen(
                q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal, scale=scale,
                window=window, softcap=softcap, alibi_slopes=alibi_slopes, return_lse=return_lse)
    return _run(q, k, v, vspec, generator, return_lse, None, None)


def blockwise_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False,
                               scale=None, window=(-1, -1), softcap=0.0, alibi_slopes=None, dropout_p=0.0,
                               generator=None, return_lse=False, block_q: int | None = None,
                               block_k: int | None = None):
    """The blockwise kernel on packed sequences (any device): flash_attention_varlen's arguments plus tile sizes."""
    check_block_sizes(block_q, block_k)
    vspec = check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
                         scale=scale, window=window, softcap=softcap, alibi_slopes=alibi_slopes,
                         dropout_p=dropout_p, generator=generator)
    return _run(q, k, v, vspec, generator, return_lse, block_q, block_k)


def _run(q, k, v, vspec: VarlenSpec, generator, return_lse, block_q, block_k):
    plans: dict[tuple[int, int], object] = {}  # sequences of equal lengths share a tile map
    tmaps = []
    for spec in vspec.seqs:
        key = (spec.Sq, spec.Sk)
        if key not in plans:
            plans[key] = plan_tiles(spec, block_q, block_k)
        tmaps.append(plans[key])
    p = vspec.seqs[0].dropout_p if vspec.seqs else 0.0
    seed = draw_seed(generator, q.device) if p > 0 else None
    o, lse = _VarlenAttention.apply(q, k, v, vspec, tmaps, seed)
    return (o, lse) if return_lse else o


def _problems(vspec: VarlenSpec, tmaps, seed, qs, kc, vc, o, m, ell, do=None, dq=None, dk=None, dv=None):
    """One Problem per sequence, its tensors views of the packed (H, T, X) ones (no copies)."""
    out = []
    for b, spec in enumerate(vspec.seqs):
        (q0, q1), (k0, k1) = vspec.cu_q[b:b + 2], vspec.cu_k[b:b + 2]
        Hkv, G, Sq = spec.Hkv, spec.G, q1 - q0
        tiles = Tiles(spec, tmaps[b], None, seed, qs.dtype, qs.device,
                      DropoutCoords(row_base=q0, col_base=k0, Sq_total=vspec.Tq, Sk_total=vspec.Tk))

        def rows5(x):  # (H, Tq, X) -> this sequence's (1, Hkv, G, Sq, X)
            return x[:, q0:q1].view(1, Hkv, G, Sq, x.shape[-1])

        out.append(Problem(tiles, rows5(qs), kc[:, k0:k1], vc[:, k0:k1], rows5(o),
                           m[:, q0:q1].view(1, Hkv, G, Sq), ell[:, q0:q1].view(1, Hkv, G, Sq),
                           do5=None if do is None else rows5(do), dq5=None if dq is None else rows5(dq),
                           dk=None if dk is None else dk[:, k0:k1], dv=None if dv is None else dv[:, k0:k1]))
    return out


def _heads_first(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(T, H, X) -> a new contiguous (H, T, X) tensor in dtype."""
    T, H, X = x.shape
    return torch.empty(H, T, X, dtype=dtype, device=x.device).copy_(x.transpose(0, 1))


class _VarlenAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, vspec: VarlenSpec, tmaps, seed):
        cd = compute_dtype(q.dtype)
        Tq, H, _ = q.shape
        Dv = v.shape[2]
        scale = vspec.seqs[0].scale if vspec.seqs else 1.0
        qs = _heads_first(q, cd).mul_(scale * LOG2E)  # (H, Tq, D), scale and log2 e folded in
        kc, vc = _heads_first(k, cd), _heads_first(v, cd)  # (Hkv, Tk, D), (Hkv, Tk, Dv)
        o, m, ell = qs.new_empty(H, Tq, Dv), qs.new_empty(H, Tq), qs.new_empty(H, Tq)
        forward_problems(_problems(vspec, tmaps, seed, qs, kc, vc, o, m, ell))
        lse = lse_from_stats(m, ell)  # (H, Tq)
        ctx.save_for_backward(qs, kc, vc, o, m, ell)
        ctx.vspec, ctx.tmaps, ctx.seed, ctx.in_dtype, ctx.scale = vspec, tmaps, seed, q.dtype, scale
        ctx.mark_non_differentiable(lse)
        # (H, Tq, Dv) -> (Tq, H, Dv), contiguous as flash_attn_varlen_func's output
        out = torch.empty(Tq, H, Dv, dtype=q.dtype, device=q.device).copy_(o.transpose(0, 1))
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, do, _dlse):
        qs, kc, vc, o, m, ell = ctx.saved_tensors
        dos = _heads_first(do, qs.dtype)
        dq, dk, dv = torch.zeros_like(qs), torch.zeros_like(kc), torch.zeros_like(vc)
        backward_problems(_problems(ctx.vspec, ctx.tmaps, ctx.seed, qs, kc, vc, o, m, ell, dos, dq, dk, dv), False)
        dq.mul_(ctx.scale)
        dk.mul_(LN2)  # dK = dS^T (scale q) and qs = log2e * scale * q
        t = ctx.in_dtype
        # (H, T, X) -> (T, H, X), as the inputs
        return dq.transpose(0, 1).to(t), dk.transpose(0, 1).to(t), dv.transpose(0, 1).to(t), None, None, None
