"""FlashAttention-2 in Triton for CUDA tensors: forward, and a deterministic backward.

The math is blockwise.py's, in base 2 as GPUs prefer (exp2, log2 e folded into
the scale), one program per (query block, head) in the forward:

    s = (q k^T) * scale  [-> softcap tanh]  -> -inf outside the causal/window band and past Sk
    m' = max(m, rowmax s),  p = 2^((s - m') log2 e),  l <- 2^((m - m') log2 e) l + rowsum p
    acc <- alpha acc + p V;  O = acc / l,  LSE = m + ln l     (l = 0: O = 0, LSE = +inf)

Only the key blocks that intersect the band are visited (causal visits about
half). The backward recomputes P = exp(s - LSE) and runs two kernels, with no
atomics so that gradients are bitwise reproducible (flash-attn issues #414,
#2244): one program per (key block, kv head) sums dK, dV over the G query heads
of its group and all query blocks; one per (query block, head) sums dQ:

    D = rowsum(dO o O);  dV = P^T dO;  dS = P o (dO V^T - D)  [o (1 - tanh^2)];
    dK = scale dS^T Q;   dQ = scale dS K

Matmuls take fp16/bf16 operands with fp32 accumulation (tf32 is never used
for fp32 inputs: their dots run in IEEE fp32). Head dims up to 128, padded to
a power of two. Masks and dropout are not implemented here: flash_attention
sends such calls to the blockwise kernel, which runs on CUDA tensors too.

Tested on the CPU by Triton's interpreter (TRITON_INTERPRET=1), whose tl.dot
mishandles bf16 operands in triton 3.9 (it multiplies their bit patterns): when
interpreting, bf16 operands are cast to fp32 just before each dot
(the `UPCAST` constexpr); on a GPU the bf16 dot runs as written.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .inputs import check_inputs

__all__ = ["triton_attention", "supports", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 128


@triton.jit
def _tanh(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1): exact limits +-1, no libdevice needed (runs in the interpreter).
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _scores(q, kT, offs_m, offs_n, Sk, OFF, LEFT, RIGHT, scale, softcap,
            HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
            UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """(BLOCK_M, BLOCK_N) natural-log scores with -inf where hidden, and tanh(s/softcap) (or 0)."""
    s = _dot(q, kT, UPCAST, PRECISION) * scale
    t = s * 0.0
    if SOFTCAP:
        t = _tanh(s / softcap)
        s = softcap * t
    rel = offs_n[None, :] - (offs_m[:, None] + OFF)  # j - (i + Sk - Sq)
    valid = offs_n[None, :] < Sk
    if HAS_LEFT:
        valid = valid & (rel >= -LEFT)
    if HAS_RIGHT:
        valid = valid & (rel <= RIGHT)
    s = tl.where(valid, s, float("-inf"))
    return s, t


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE,
                sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos,
                H, G, Sq, Sk, D, OFF, LEFT, RIGHT, scale, softcap,
                HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G  # GQA: the kv head of this query head
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :],
                mask=(offs_m[:, None] < Sq) & d_ok[None, :], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Key blocks that meet the band of these rows.
    lo = 0
    hi = Sk
    if HAS_LEFT:
        lo = tl.maximum(0, pid_m * BLOCK_M + OFF - LEFT)
        lo = (lo // BLOCK_N) * BLOCK_N
    if HAS_RIGHT:
        hi = tl.minimum(Sk, pid_m * BLOCK_M + BLOCK_M - 1 + OFF + RIGHT + 1)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < Sk
        kT = tl.load(K + b * skb + hk * skh + offs_n[None, :] * sks + offs_d[:, None],
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        s, t = _scores(q, kT, offs_m, offs_n, Sk, OFF, LEFT, RIGHT, scale, softcap,
                       HAS_LEFT, HAS_RIGHT, SOFTCAP, UPCAST, PRECISION)
        s2 = s * 1.4426950408889634  # log2 e
        m_new = tl.maximum(m_i, tl.max(s2, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # shift by 0 while nothing is seen
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s2 - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svs + offs_d[None, :],
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST, PRECISION)
        m_i = m_new
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    o = acc / l_safe[:, None]
    lse = tl.where(seen, (m_i + tl.log2(l_safe)) / 1.4426950408889634, float("inf"))
    row_ok = offs_m < Sq
    tl.store(O + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :], o.to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh * Sq + offs_m, lse, mask=row_ok)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DD, DK, DV,
                     sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sdb, sdh, sds,
                     Hkv, G, Sq, Sk, D, OFF, LEFT, RIGHT, scale, softcap,
                     HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // Hkv
    hk = bhk % Hkv
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    n_ok = offs_n < Sk
    kT = tl.load(K + b * skb + hk * skh + offs_n[None, :] * sks + offs_d[:, None],
                 mask=n_ok[None, :] & d_ok[:, None], other=0.0)
    vT = tl.load(V + b * svb + hk * svh + offs_n[None, :] * svs + offs_d[:, None],
                 mask=n_ok[None, :] & d_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # Query rows that can see these keys: j - right - OFF <= i <= j + left - OFF.
    lo = 0
    hi = Sq
    if HAS_RIGHT:
        lo = tl.maximum(0, pid_n * BLOCK_N - RIGHT - OFF)
        lo = (lo // BLOCK_M) * BLOCK_M
    if HAS_LEFT:
        hi = tl.minimum(Sq, pid_n * BLOCK_N + BLOCK_N - 1 + LEFT - OFF + 1)
    for g in range(0, G):
        h = hk * G + g
        bh = b * Hkv * G + h
        for m0 in range(lo, hi, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            m_ok = offs_m < Sq
            q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :],
                        mask=m_ok[:, None] & d_ok[None, :], other=0.0)
            do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sds + offs_d[None, :],
                         mask=m_ok[:, None] & d_ok[None, :], other=0.0)
            lse = tl.load(LSE + bh * Sq + offs_m, mask=m_ok, other=float("inf"))
            Dd = tl.load(DD + bh * Sq + offs_m, mask=m_ok, other=0.0)
            s, t = _scores(q, kT, offs_m, offs_n, Sk, OFF, LEFT, RIGHT, scale, softcap,
                           HAS_LEFT, HAS_RIGHT, SOFTCAP, UPCAST, PRECISION)
            p = tl.exp2((s - lse[:, None]) * 1.4426950408889634)  # +inf LSE (empty row) -> 0
            dv += _dot(tl.trans(p.to(do.dtype)), do, UPCAST, PRECISION)
            dp = _dot(do, vT, UPCAST, PRECISION)
            ds = p * (dp - Dd[:, None])
            if SOFTCAP:
                ds = ds * (1.0 - t * t)
            dk += _dot(tl.trans(ds.to(q.dtype)), q, UPCAST, PRECISION)
    dk = dk * scale
    out = bhk * Sk * D + offs_n[:, None] * D + offs_d[None, :]  # DK, DV contiguous (B, Hkv, Sk, D)
    ok = n_ok[:, None] & d_ok[None, :]
    tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=ok)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=ok)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DD, DQ,
                   sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sdb, sdh, sds,
                   H, G, Sq, Sk, D, OFF, LEFT, RIGHT, scale, softcap,
                   HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    m_ok = offs_m < Sq
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sds + offs_d[None, :],
                 mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    lse = tl.load(LSE + bh * Sq + offs_m, mask=m_ok, other=float("inf"))
    Dd = tl.load(DD + bh * Sq + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo = 0
    hi = Sk
    if HAS_LEFT:
        lo = tl.maximum(0, pid_m * BLOCK_M + OFF - LEFT)
        lo = (lo // BLOCK_N) * BLOCK_N
    if HAS_RIGHT:
        hi = tl.minimum(Sk, pid_m * BLOCK_M + BLOCK_M - 1 + OFF + RIGHT + 1)
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < Sk
        kT = tl.load(K + b * skb + hk * skh + offs_n[None, :] * sks + offs_d[:, None],
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        vT = tl.load(V + b * svb + hk * svh + offs_n[None, :] * svs + offs_d[:, None],
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        s, t = _scores(q, kT, offs_m, offs_n, Sk, OFF, LEFT, RIGHT, scale, softcap,
                       HAS_LEFT, HAS_RIGHT, SOFTCAP, UPCAST, PRECISION)
        p = tl.exp2((s - lse[:, None]) * 1.4426950408889634)
        dp = _dot(do, vT, UPCAST, PRECISION)
        ds = p * (dp - Dd[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - t * t)
        dq += _dot(ds.to(kT.dtype), tl.trans(kT), UPCAST, PRECISION)
    dq = dq * scale
    tl.store(DQ + bh * Sq * D + offs_m[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _config(spec, dtype):
    BLOCK_D = max(16, triton.next_power_of_2(spec.D))
    return dict(
        HAS_LEFT=spec.left >= 0, HAS_RIGHT=spec.right >= 0, SOFTCAP=spec.softcap > 0, BLOCK_D=BLOCK_D,
        UPCAST=_interpreting() and dtype == torch.bfloat16,
        PRECISION="ieee" if dtype == torch.float32 else "tf32",
    )


def _launch_args(spec):
    return (spec.Sq, spec.Sk, spec.D, spec.offset, max(spec.left, 0), max(spec.right, 0), spec.scale,
            spec.softcap if spec.softcap > 0 else 1.0)


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, spec, blocks):
        B, H, Sq, D = q.shape
        o = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty(B, H, Sq, device=q.device, dtype=torch.float32)
        cfg = _config(spec, q.dtype)
        bm, bn = blocks["fwd"]
        grid = (triton.cdiv(Sq, bm), B * H)
        _fwd_kernel[grid](q, k, v, o, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
                          H, spec.G, *_launch_args(spec), BLOCK_M=bm, BLOCK_N=bn, **cfg, **blocks["launch"])
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.spec, ctx.blocks = spec, blocks
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse = ctx.saved_tensors
        spec, blocks = ctx.spec, ctx.blocks
        B, H, Sq, D = q.shape
        Hkv, Sk = k.shape[1], k.shape[2]
        do = do.contiguous()
        Dd = (do.float() * o.float()).sum(-1).contiguous()  # (B, H, Sq): rowsum(dO o O)
        dq = torch.empty(B, H, Sq, D, device=q.device, dtype=q.dtype)
        dk = torch.empty(B, Hkv, Sk, D, device=q.device, dtype=k.dtype)
        dv = torch.empty(B, Hkv, Sk, D, device=q.device, dtype=v.dtype)
        cfg = _config(spec, q.dtype)
        strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
        bm, bn = blocks["bwd"]
        _bwd_dkdv_kernel[(triton.cdiv(Sk, bn), B * Hkv)](q, k, v, do, lse, Dd, dk, dv, *strides, Hkv, spec.G,
                                                          *_launch_args(spec), BLOCK_M=bm, BLOCK_N=bn, **cfg,
                                                          **blocks["launch"])
        _bwd_dq_kernel[(triton.cdiv(Sq, bm), B * H)](q, k, v, do, lse, Dd, dq, *strides, H, spec.G,
                                                      *_launch_args(spec), BLOCK_M=bm, BLOCK_N=bn, **cfg,
                                                      **blocks["launch"])
        return dq, dk, dv, None, None


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask=None, dropout_p: float = 0.0) -> bool:
    """Whether the Triton kernel implements this call (else flash_attention uses the blockwise kernel)."""
    return (mask is None and dropout_p == 0.0 and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and q.shape[-1] == v.shape[-1] and 1 <= q.shape[-1] <= MAX_HEAD_DIM
            and min(q.shape[2], k.shape[2]) > 0)


def triton_attention(q, k, v, *, causal=False, scale=None, window=(-1, -1), softcap=0.0, return_lse=False,
                     block_m: int = 64, block_n: int = 64, num_warps: int | None = None,
                     num_stages: int | None = None):
    """The Triton kernel. q (B, H, Sq, D), k, v (B, Hkv, Sk, D) -> O (B, H, Sq, D) [, LSE (B, H, Sq) fp32].

    Any strides with a unit last dim; CUDA tensors (CPU tensors under TRITON_INTERPRET=1).
    block_m/block_n (powers of two >= 16) and num_warps/num_stages are launch settings; the
    defaults are untuned guesses (no GPU was available where this was written): see
    benchmarks/attention_gpu.py, which sweeps them."""
    spec = check_inputs(q, k, v, causal=causal, scale=scale, window=window, softcap=softcap)
    if not supports(q, k, v):
        raise ValueError(f"triton_attention supports fp16/bf16/fp32, head dim 1..{MAX_HEAD_DIM} equal for q and v, "
                         f"non-empty lengths; got {q.dtype}, q {tuple(q.shape)}, v {tuple(v.shape)}")
    q, k, v = [x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v)]
    launch = {k_: v_ for k_, v_ in (("num_warps", num_warps), ("num_stages", num_stages)) if v_ is not None}
    blocks = {"fwd": (block_m, block_n), "bwd": (block_m, block_n), "launch": launch}
    o, lse = _TritonAttention.apply(q, k, v, spec, blocks)
    return (o, lse) if return_lse else o

