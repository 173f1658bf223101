"""Attention the readable way: materialise the (Sq, Sk) scores, then softmax.

    S = scale * Q K^T                               (B, H, Sq, Sk)
    S = softcap * tanh(S / softcap)                 if softcap > 0
    S = S + mask                                    additive mask
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
"""
from __future__ import annotations

import math

import torch

from .dropout import draw_seed, keep_mask
from .inputs import check_inputs
from .masks import dense_visible

__all__ = ["attention_reference"]


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        mask: torch.Tensor | None = None, scale: float | None = None,
                        window: tuple[int, int] = (-1, -1), softcap: float = 0.0, dropout_p: float = 0.0,
                        generator: torch.Generator | None = None, return_lse: bool = False):
    """Naive attention. q (B, H, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv) -> O (B, H, Sq, Dv).

    With return_lse, returns (O, LSE) with LSE (B, H, Sq) in q's dtype."""
    spec = check_inputs(q, k, v, causal=causal, mask=mask, scale=scale, window=window, softcap=softcap,
                        dropout_p=dropout_p, generator=generator)
    G = spec.G
    if G > 1:  # GQA: query head h reads key/value head h // G
        k = k.repeat_interleave(G, dim=1)  # (B, Hkv, Sk, D) -> (B, H, Sk, D)
        v = v.repeat_interleave(G, dim=1)
    s = torch.matmul(q, k.transpose(-2, -1)) * spec.scale  # (B, H, Sq, Sk)
    if spec.softcap > 0:
        s = spec.softcap * torch.tanh(s / spec.softcap)
    if spec.additive_mask:
        s = s + spec.mask.to(s.dtype)
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
    if spec.dropout_p > 0:
        seed = draw_seed(generator, q.device)
        z = keep_mask(seed, spec.dropout_p, spec.B, spec.H, spec.Sq, spec.Sk, q.device)
        p = p * z.to(p.dtype) / (1.0 - spec.dropout_p)
    o = torch.matmul(p, v)  # (B, H, Sq, Dv)
    if not return_lse:
        return o
    lse = torch.where(seen, m + torch.log(torch.where(seen, ell, torch.ones_like(ell))),
                      torch.full_like(ell, math.inf)).squeeze(-1)
    return o, lse.detach()
