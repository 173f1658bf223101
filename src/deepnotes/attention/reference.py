"""Attention the readable way: materialise the (Sq, Sk) scores, then softmax.

    S = scale * Q K^T                               (B, H, Sq, Sk)
    S = softcap * tanh(S / softcap)                 if softcap > 0
    S = S + mask                                    additive mask
    S = S - slope * |i + Sk - Sq - j|               ALiBi (alibi.py)
    S = -inf where hidden                           causal / window / bool mask
    LSE_i = log sum_j exp(S_ij),  P = exp(S - LSE)  rows with no visible key: P = 0, LSE = +inf
    O = (P o Z / (1 - p)) V                         dropout (Z: dropout.keep_mask)

This is the path the tests hold the kernels equal to. It computes in the
dtype it is given: float64 inputs give the float64 reference, inputs in the
working dtype give flash-attn's baseline ("the same naive math in the input
dtype"). It is differentiable by autograd, including into an additive mask.
Memory is Theta(B H Sq Sk).

LSE convention for a row that sees no key: +inf, as flash-attn's kernel
(exp(S - LSE) is then 0 for every entry, with no inf - inf).

attention_reference_varlen runs the same math one sequence at a time on the
packed (total_tokens, H, D) layout of flash_attention_varlen; its dropout
draws Z at the packed coordinates (h, cu_q[b] + i, cu_k[b] + j), as the
blockwise kernel does.
"""
from __future__ import annotations

import math

import torch

from .alibi import alibi_bias
from .dropout import draw_seed, keep_mask, keep_tile
from .inputs import AttentionSpec, check_inputs, check_varlen
from .masks import dense_visible

__all__ = ["attention_reference", "attention_reference_varlen"]


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        mask: torch.Tensor | None = None, scale: float | None = None,
                        window: tuple[int, int] = (-1, -1), softcap: float = 0.0, dropout_p: float = 0.0,
                        generator: torch.Generator | None = None, return_lse: bool = False,
                        alibi_slopes: torch.Tensor | None = None):
    """Naive attention. q (B, H, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv) -> O (B, H, Sq, Dv).

    With return_lse, returns (O, LSE) with LSE (B, H, Sq) in q's dtype."""
    spec = check_inputs(q, k, v, causal=causal, mask=mask, scale=scale, window=window, softcap=softcap,
                        dropout_p=dropout_p, generator=generator, alibi_slopes=alibi_slopes)
    z = None
    if spec.dropout_p > 0:
        seed = draw_seed(generator, q.device)
        z = keep_mask(seed, spec.dropout_p, spec.B, spec.H, spec.Sq, spec.Sk, q.device)
    o, lse = _naive(q, k, v, spec, z)
    return (o, lse) if return_lse else o


def attention_reference_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                               cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *,
                               causal: bool = False, scale: float | None = None,
                               window: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                               alibi_slopes: torch.Tensor | None = None, dropout_p: float = 0.0,
                               generator: torch.Generator | None = None, return_lse: bool = False):
    """Naive attention per packed sequence. q (Tq, H, D), k (Tk, Hkv, D), v (Tk, Hkv, Dv) -> O (Tq, H, Dv).

    With return_lse, also LSE (H, Tq) in q's dtype (flash_attn_varlen_func's layout)."""
    vspec = check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
                         scale=scale, window=window, softcap=softcap, alibi_slopes=alibi_slopes,
                         dropout_p=dropout_p, generator=generator)
    seed = draw_seed(generator, q.device) if vspec.seqs and vspec.seqs[0].dropout_p > 0 else None
    outs, lses = [], []
    for b, spec in enumerate(vspec.seqs):
        (q0, q1), (k0, k1) = vspec.cu_q[b:b + 2], vspec.cu_k[b:b + 2]
        # (S, H, D) -> (1, H, S, D)
        qb, kb, vb = (x.transpose(0, 1).unsqueeze(0) for x in (q[q0:q1], k[k0:k1], v[k0:k1]))
        z = None
        if seed is not None:
            heads = torch.arange(spec.H, device=q.device)
            rows, cols = torch.arange(q0, q1, device=q.device), torch.arange(k0, k1, device=q.device)
            z = keep_tile(seed, spec.dropout_p, heads, rows, cols, vspec.Tq, vspec.Tk).unsqueeze(0)
        o, lse = _naive(qb, kb, vb, spec, z)
        outs.append(o[0].transpose(0, 1))  # (1, H, S, Dv) -> (S, H, Dv)
        lses.append(lse[0])
    H, Dv = q.shape[1], v.shape[2]
    o = torch.cat(outs, 0) if outs else q.new_zeros(0, H, Dv)
    lse = torch.cat(lses, 1) if lses else q.new_zeros(H, 0)
    return (o, lse) if return_lse else o


def _naive(q, k, v, spec: AttentionSpec, z: torch.Tensor | None):
    """softmax(S) V for one checked call; z: the dropout keep mask broadcastable to (B, H, Sq, Sk)."""
    G = spec.G
    if G > 1:  # GQA: query head h reads key/value head h // G
        k = k.repeat_interleave(G, dim=1)  # (B, Hkv, Sk, D) -> (B, H, Sk, D)
        v = v.repeat_interleave(G, dim=1)
    s = torch.matmul(q, k.transpose(-2, -1)) * spec.scale  # (B, H, Sq, Sk)
    if spec.softcap > 0:
        s = spec.softcap * torch.tanh(s / spec.softcap)
    if spec.additive_mask:
        s = s + spec.mask.to(s.dtype)
    if spec.alibi is not None:
        s = s + alibi_bias(spec.alibi, spec.Sq, spec.Sk, s.dtype)
    visible = dense_visible(spec, q.device)
    if visible is not None:
        s = s.masked_fill(~visible, -math.inf)
    # The shift by the row max is exact (softmax is shift invariant), so it carries no gradient.
    m = s.detach().amax(-1, keepdim=True) if spec.Sk > 0 else s.new_zeros(*s.shape[:-1], 1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # shift by 0 where the row sees nothing
    e = torch.exp(s - m)
    ell = e.sum(-1, keepdim=True)  # (B, H, Sq, 1)
    seen = ell > 0
    p = e / torch.where(seen, ell, torch.ones_like(ell))
    if z is not None:
        p = p * z.to(p.dtype) / (1.0 - spec.dropout_p)
    o = torch.matmul(p, v)  # (B, H, Sq, Dv)
    lse = torch.where(seen, m + torch.log(torch.where(seen, ell, torch.ones_like(ell))),
                      torch.full_like(ell, math.inf)).squeeze(-1)
    return o, lse.detach()
