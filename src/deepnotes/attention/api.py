"""flash_attention: one signature, the kernel chosen by the tensors' device.

* CPU tensors (and any non-CUDA device): the blockwise kernel (blockwise.py).
* CUDA tensors: the Triton kernel (triton_kernel.py) for the features it
  implements (causal, window, softcap, scale, ALiBi, GQA, fp16/bf16/fp32, head
  dims up to 128, return_lse); a call that also asks for a mask or dropout runs the
  blockwise kernel on the GPU instead, which is device-agnostic torch code.
  The choice depends only on the arguments, never on a global flag.

The reference path with the same signature is reference.attention_reference.
"""
from __future__ import annotations

import torch
from torch import nn

from .blockwise import blockwise_attention
from .inputs import check_inputs

__all__ = ["flash_attention", "ScaledDotProductAttention", "uses_triton"]


def uses_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask=None, dropout_p: float = 0.0) -> bool:
    """Whether flash_attention runs these arguments on the Triton kernel (ALiBi never changes it)."""
    if not (q.is_cuda and k.is_cuda and v.is_cuda):
        return False
    from . import triton_kernel

    return triton_kernel.supports(q, k, v, mask=mask, dropout_p=dropout_p)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    mask: torch.Tensor | None = None, scale: float | None = None,
                    window: tuple[int, int] = (-1, -1), softcap: float = 0.0, dropout_p: float = 0.0,
                    generator: torch.Generator | None = None, return_lse: bool = False,
                    alibi_slopes: torch.Tensor | None = None):
    """Exact attention by tiles with an online softmax, O(N) extra memory.

    q (B, H, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv) -> O (B, H, Sq, Dv), in q's dtype;
    with return_lse also LSE (B, H, Sq) in float32 (float64 for float64 inputs), +inf for rows
    that see no key (their output is 0 and their gradients are 0).

    causal is aligned bottom-right (query i sees keys j <= i + Sk - Sq); window=(left, right)
    keeps keys with -left <= j - (i + Sk - Sq) <= right (-1 = unbounded); mask is bool
    (True = attend) or additive float broadcastable to (B, H, Sq, Sk), and an additive mask
    that requires grad receives its gradient. softcap > 0 maps scores to softcap*tanh(s/softcap)
    before the mask. alibi_slopes (H,) or (B, H) adds -slope * |i + Sk - Sq - j| (flash-attn's
    ALiBi, alibi.py) computed per tile; the slopes get no gradient. Dropout draws one seed from
    `generator`, so the same generator state gives bitwise the same output and gradients."""
    if isinstance(q, torch.Tensor) and q.is_cuda:  # blockwise_attention checks its own inputs
        check_inputs(q, k, v, causal=causal, mask=mask, scale=scale, window=window, softcap=softcap,
                     dropout_p=dropout_p, generator=generator, alibi_slopes=alibi_slopes)
        if uses_triton(q, k, v, mask=mask, dropout_p=dropout_p):
            from .triton_kernel import triton_attention

            return triton_attention(q, k, v, causal=causal, scale=scale, window=window, softcap=softcap,
                                    alibi_slopes=alibi_slopes, return_lse=return_lse)
    return blockwise_attention(q, k, v, causal=causal, mask=mask, scale=scale, window=window, softcap=softcap,
                               dropout_p=dropout_p, generator=generator, return_lse=return_lse,
                               alibi_slopes=alibi_slopes)


class ScaledDotProductAttention(nn.Module):
    """Thin module over flash_attention; dropout only in training mode.

    forward(q (B, H, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv), mask=None, generator=None)
    -> (B, H, Sq, Dv)."""

    def __init__(self, causal: bool = False, scale: float | None = None, window: tuple[int, int] = (-1, -1),
                 softcap: float = 0.0, dropout_p: float = 0.0):
        super().__init__()
        self.causal, self.scale, self.window = causal, scale, tuple(window)
        self.softcap, self.dropout_p = softcap, dropout_p

    def forward(self, q, k, v, mask=None, generator=None):
        return flash_attention(q, k, v, causal=self.causal, mask=mask, scale=self.scale, window=self.window,
                               softcap=self.softcap, dropout_p=self.dropout_p if self.training else 0.0,
                               generator=generator)

    def extra_repr(self) -> str:
        return (f"causal={self.causal}, scale={self.scale}, window={self.window}, softcap={self.softcap}, "
                f"dropout_p={self.dropout_p}")
