"""FlashAttention-2 in Triton for CUDA tensors: forward, and a deterministic backward.

The math is blockwise.py's, in base 2 as GPUs prefer (exp2, log2 e folded in),
one program per (query block, head) in the forward:

    s = (q k^T) * scale  [-> softcap tanh]  [- slope |i + Sk - Sq - j|]  -> -inf outside the band and past Sk
    m' = max(m, rowmax s2),  p = 2^(s2 - m'),  l <- 2^(m - m') l + rowsum p    (s2 = log2e s)
    acc <- alpha acc + p V;  O = acc / l;  row stats m, log2 l    (l = 0: O = 0, m = +inf, log2 l = 0)

Only the key blocks that intersect the band are visited (causal visits about
half). The backward recomputes P = 2^((s2 - m) - log2 l) -- from the two row
stats rather than one rounded LSE, whose rounding at |LSE| (large under
ALiBi) would scale a whole row of P (see blockwise.py) -- and runs two
kernels, with no atomics so that gradients are bitwise reproducible
(flash-attn issues #414, #2244): one program per (key block, kv head) sums
dK, dV over the G query heads of its group and all query blocks; one per
(query block, head) sums dQ:

    D = rowsum(dO o O);  dV = P^T dO;  dS = P o (dO V^T - D)  [o (1 - tanh^2)];
    dK = scale dS^T Q;   dQ = scale dS K

The same kernels run packed variable-length batches (VARLEN: flash-attn's
cu_seqlens layout, varlen.py): program (block, b*H + h) reads sequence b's
offsets from cu_seqlens_q/k, aligns causal/window/ALiBi to that sequence's
bottom-right corner, and does nothing when its block starts past the
sequence's end (the grid is sized by max_seqlen_q/k).

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

import dataclasses
import math
import os

import torch
import triton
import triton.language as tl

from .inputs import AttentionSpec, check_inputs, check_varlen

__all__ = ["triton_attention", "triton_attention_varlen", "supports", "supports_varlen", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 128
LN2 = math.log(2.0)


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
def _bounds(CU_Q, CU_K, b, Sq, Sk, VARLEN: tl.constexpr):
    """(first query row, Sq, first key row, Sk) of batch entry b: offsets into the packed rows for varlen."""
    q0 = 0
    k0 = 0
    if VARLEN:
        q0 = tl.load(CU_Q + b)
        k0 = tl.load(CU_K + b)
        Sq = tl.load(CU_Q + b + 1) - q0
        Sk = tl.load(CU_K + b + 1) - k0
    return q0, Sq, k0, Sk


@triton.jit
def _scores(q, kT, offs_m, offs_n, Sk, OFF, LEFT, RIGHT, scale, softcap, slope,
            HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
            UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """(BLOCK_M, BLOCK_N) natural-log scores with -inf where hidden, and tanh(s/softcap) (or 0)."""
    s = _dot(q, kT, UPCAST, PRECISION) * scale
    t = s * 0.0
    if SOFTCAP:
        t = _tanh(s / softcap)
        s = softcap * t
    rel = offs_n[None, :] - (offs_m[:, None] + OFF)  # j - (i + Sk - Sq)
    if ALIBI:
        s = s - slope * tl.abs(rel).to(tl.float32)
    valid = offs_n[None, :] < Sk
    if HAS_LEFT:
        valid = valid & (rel >= -LEFT)
    if HAS_RIGHT:
        valid = valid & (rel <= RIGHT)
    s = tl.where(valid, s, float("-inf"))
    return s, t


@triton.jit
def _fwd_kernel(Q, K, V, O, M2, LL, SLOPES, CU_Q, CU_K,
                sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos, slb, slh, ssb,
                H, G, Sq, Sk, D, LEFT, RIGHT, scale, softcap,
                HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G  # GQA: the kv head of this query head
    q0, Sq, k0, Sk = _bounds(CU_Q, CU_K, b, Sq, Sk, VARLEN)
    if pid_m * BLOCK_M < Sq:  # varlen: blocks past this sequence's end do nothing
        OFF = Sk - Sq
        slope = 0.0
        if ALIBI:
            slope = tl.load(SLOPES + b * ssb + h)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        row_ok = offs_m < Sq
        q = tl.load(Q + b * sqb + h * sqh + (q0 + offs_m[:, None]) * sqs + offs_d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
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
            kT = tl.load(K + b * skb + hk * skh + (k0 + offs_n[None, :]) * sks + offs_d[:, None],
                         mask=n_ok[None, :] & d_ok[:, None], other=0.0)
            s, t = _scores(q, kT, offs_m, offs_n, Sk, OFF, LEFT, RIGHT, scale, softcap, slope,
                           HAS_LEFT, HAS_RIGHT, SOFTCAP, ALIBI, UPCAST, PRECISION)
            s2 = s * 1.4426950408889634  # log2 e
            m_new = tl.maximum(m_i, tl.max(s2, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # shift by 0 while nothing is seen
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s2 - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + b * svb + hk * svh + (k0 + offs_n[:, None]) * svs + offs_d[None, :],
                        mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST, PRECISION)
            m_i = m_new
        seen = l_i > 0.0
        l_safe = tl.where(seen, l_i, 1.0)
        o = acc / l_safe[:, None]
        tl.store(O + b * sob + h * soh + (q0 + offs_m[:, None]) * sos + offs_d[None, :], o.to(O.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])
        stats = b * slb + h * slh + q0 + offs_m
        tl.store(M2 + stats, tl.where(seen, m_i, float("inf")), mask=row_ok)
        tl.store(LL + stats, tl.where(seen, tl.log2(l_safe), 0.0), mask=row_ok)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, M2, LL, DD, DK, DV, SLOPES, CU_Q, CU_K,
                     sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sdb, sdh, sds, slb, slh, ssb,
                     sgb, sgh, sgs,
                     Hkv, G, Sq, Sk, D, LEFT, RIGHT, scale, softcap,
                     HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                     VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // Hkv
    hk = bhk % Hkv
    q0, Sq, k0, Sk = _bounds(CU_Q, CU_K, b, Sq, Sk, VARLEN)
    if pid_n * BLOCK_N < Sk:
        OFF = Sk - Sq
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        n_ok = offs_n < Sk
        kT = tl.load(K + b * skb + hk * skh + (k0 + offs_n[None, :]) * sks + offs_d[:, None],
                     mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        vT = tl.load(V + b * svb + hk * svh + (k0 + offs_n[None, :]) * svs + offs_d[:, None],
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
            slope = 0.0
            if ALIBI:
                slope = tl.load(SLOPES + b * ssb + h)
            for m0 in range(lo, hi, BLOCK_M):
                offs_m = m0 + tl.arange(0, BLOCK_M)
                m_ok = offs_m < Sq
                q = tl.load(Q + b * sqb + h * sqh + (q0 + offs_m[:, None]) * sqs + offs_d[None, :],
                            mask=m_ok[:, None] & d_ok[None, :], other=0.0)
                do = tl.load(DO + b * sdb + h * sdh + (q0 + offs_m[:, None]) * sds + offs_d[None, :],
                             mask=m_ok[:, None] & d_ok[None, :], other=0.0)
                stats = b * slb + h * slh + q0 + offs_m
                m2 = tl.load(M2 + stats, mask=m_ok, other=float("inf"))
                ll = tl.load(LL + stats, mask=m_ok, other=0.0)
                Dd = tl.load(DD + stats, mask=m_ok, other=0.0)
                s, t = _scores(q, kT, offs_m, offs_n, Sk, OFF, LEFT, RIGHT, scale, softcap, slope,
                               HAS_LEFT, HAS_RIGHT, SOFTCAP, ALIBI, UPCAST, PRECISION)
                # 2^((s2 - m) - log2 l): m = +inf (a row that sees no key) gives 0
                p = tl.exp2((s * 1.4426950408889634 - m2[:, None]) - ll[:, None])
                dv += _dot(tl.trans(p.to(do.dtype)), do, UPCAST, PRECISION)
                dp = _dot(do, vT, UPCAST, PRECISION)
                ds = p * (dp - Dd[:, None])
                if SOFTCAP:
                    ds = ds * (1.0 - t * t)
                dk += _dot(tl.trans(ds.to(q.dtype)), q, UPCAST, PRECISION)
        dk = dk * scale
        out = b * sgb + hk * sgh + (k0 + offs_n[:, None]) * sgs + offs_d[None, :]
        ok = n_ok[:, None] & d_ok[None, :]
        tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=ok)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=ok)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, M2, LL, DD, DQ, SLOPES, CU_Q, CU_K,
                   sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sdb, sdh, sds, slb, slh, ssb,
                   sgb, sgh, sgs,
                   H, G, Sq, Sk, D, LEFT, RIGHT, scale, softcap,
                   HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                   VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // G
    q0, Sq, k0, Sk = _bounds(CU_Q, CU_K, b, Sq, Sk, VARLEN)
    if pid_m * BLOCK_M < Sq:
        OFF = Sk - Sq
        slope = 0.0
        if ALIBI:
            slope = tl.load(SLOPES + b * ssb + h)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        m_ok = offs_m < Sq
        q = tl.load(Q + b * sqb + h * sqh + (q0 + offs_m[:, None]) * sqs + offs_d[None, :],
                    mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        do = tl.load(DO + b * sdb + h * sdh + (q0 + offs_m[:, None]) * sds + offs_d[None, :],
                     mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        stats = b * slb + h * slh + q0 + offs_m
        m2 = tl.load(M2 + stats, mask=m_ok, other=float("inf"))
        ll = tl.load(LL + stats, mask=m_ok, other=0.0)
        Dd = tl.load(DD + stats, mask=m_ok, other=0.0)
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
            kT = tl.load(K + b * skb + hk * skh + (k0 + offs_n[None, :]) * sks + offs_d[:, None],
                         mask=n_ok[None, :] & d_ok[:, None], other=0.0)
            vT = tl.load(V + b * svb + hk * svh + (k0 + offs_n[None, :]) * svs + offs_d[:, None],
                         mask=n_ok[None, :] & d_ok[:, None], other=0.0)
            s, t = _scores(q, kT, offs_m, offs_n, Sk, OFF, LEFT, RIGHT, scale, softcap, slope,
                           HAS_LEFT, HAS_RIGHT, SOFTCAP, ALIBI, UPCAST, PRECISION)
            p = tl.exp2((s * 1.4426950408889634 - m2[:, None]) - ll[:, None])
            dp = _dot(do, vT, UPCAST, PRECISION)
            ds = p * (dp - Dd[:, None])
            if SOFTCAP:
                ds = ds * (1.0 - t * t)
            dq += _dot(ds.to(kT.dtype), tl.trans(kT), UPCAST, PRECISION)
        dq = dq * scale
        tl.store(DQ + b * sgb + h * sgh + (q0 + offs_m[:, None]) * sgs + offs_d[None, :],
                 dq.to(DQ.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _config(spec: AttentionSpec, dtype, varlen: bool):
    BLOCK_D = max(16, triton.next_power_of_2(spec.D))
    return dict(
        HAS_LEFT=spec.left >= 0, HAS_RIGHT=spec.right >= 0, SOFTCAP=spec.softcap > 0, ALIBI=spec.alibi is not None,
        VARLEN=varlen, BLOCK_D=BLOCK_D, UPCAST=_interpreting() and dtype == torch.bfloat16,
        PRECISION="ieee" if dtype == torch.float32 else "tf32",
    )


def _bhs(x: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(batch, head, row) strides: (B, H, S, D) as they are; packed (T, H, D) has no batch stride."""
    return (0, x.stride(1), x.stride(0)) if varlen else tuple(x.stride()[:3])


class _TritonAttention(torch.autograd.Function):
    """One autograd function for both layouts. `lay` holds what differs: varlen, B, Sq, Sk (max lengths
    for varlen: they size the grid), the (B, H, S) strides of the row stats, and cu_seqlens."""

    @staticmethod
    def forward(ctx, q, k, v, spec: AttentionSpec, blocks, lay: dict):
        varlen = lay["varlen"]
        H, D = q.shape[-2 if varlen else 1], q.shape[-1]
        B, Sq, Sk = lay["B"], lay["Sq"], lay["Sk"]
        o = torch.empty_like(q, memory_format=torch.contiguous_format)
        # Row stats (m in log2 units, log2 l): (B, H, Sq), or (H, Tq) for varlen.
        stats_shape = (H, q.shape[0]) if varlen else (B, H, Sq)
        m2 = torch.empty(stats_shape, device=q.device, dtype=torch.float32)
        ll = torch.empty(stats_shape, device=q.device, dtype=torch.float32)
        slb, slh = (0, q.shape[0]) if varlen else (H * Sq, Sq)
        slopes = spec.alibi.to(torch.float32).contiguous() if spec.alibi is not None else m2
        ssb = H if spec.alibi is not None and spec.alibi.shape[0] > 1 else 0
        cu_q, cu_k = (lay["cu_q"], lay["cu_k"]) if varlen else (m2, m2)  # unused pointers when not varlen
        cfg = _config(spec, q.dtype, varlen)
        bm, bn = blocks["fwd"]
        if Sq > 0:
            _fwd_kernel[(triton.cdiv(Sq, bm), B * H)](
                q, k, v, o, m2, ll, slopes, cu_q, cu_k, *_bhs(q, varlen), *_bhs(k, varlen), *_bhs(v, varlen),
                *_bhs(o, varlen), slb, slh, ssb, H, spec.G, Sq, Sk, D, *_launch_args(spec),
                BLOCK_M=bm, BLOCK_N=bn, **cfg, **blocks["launch"])
        lse = torch.where(torch.isinf(m2), math.inf, (m2 + ll) * LN2)
        ctx.save_for_backward(q, k, v, o, m2, ll, slopes, cu_q, cu_k)
        ctx.spec, ctx.blocks, ctx.lay = spec, blocks, dict(lay, slb=slb, slh=slh, ssb=ssb, H=H)
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, m2, ll, slopes, cu_q, cu_k = ctx.saved_tensors
        spec, blocks, lay = ctx.spec, ctx.blocks, ctx.lay
        varlen, B, Sq, Sk, H = lay["varlen"], lay["B"], lay["Sq"], lay["Sk"], lay["H"]
        Hkv, D = k.shape[-2 if varlen else 1], q.shape[-1]
        do = do.contiguous()
        Dd = (do.double() * o.double()).sum(-1).float()  # rowsum(dO o O): (B, H, Sq) or (Tq, H)
        Dd = Dd.transpose(0, 1).contiguous() if varlen else Dd.contiguous()  # the row stats' layout
        dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
        dk = torch.empty(k.shape, device=q.device, dtype=k.dtype)
        dv = torch.empty(v.shape, device=q.device, dtype=v.dtype)
        cfg = _config(spec, q.dtype, varlen)
        strides = (*_bhs(q, varlen), *_bhs(k, varlen), *_bhs(v, varlen), *_bhs(do, varlen),
                   lay["slb"], lay["slh"], lay["ssb"])
        bm, bn = blocks["bwd"]
        if Sk > 0:
            _bwd_dkdv_kernel[(triton.cdiv(Sk, bn), B * Hkv)](
                q, k, v, do, m2, ll, Dd, dk, dv, slopes, cu_q, cu_k, *strides, *_bhs(dk, varlen), Hkv, spec.G,
                Sq, Sk, D, *_launch_args(spec), BLOCK_M=bm, BLOCK_N=bn, **cfg, **blocks["launch"])
        else:
            dk.zero_(), dv.zero_()
        if Sq > 0:
            _bwd_dq_kernel[(triton.cdiv(Sq, bm), B * H)](
                q, k, v, do, m2, ll, Dd, dq, slopes, cu_q, cu_k, *strides, *_bhs(dq, varlen), H, spec.G,
                Sq, Sk, D, *_launch_args(spec), BLOCK_M=bm, BLOCK_N=bn, **cfg, **blocks["launch"])
        return dq, dk, dv, None, None, None


def _launch_args(spec: AttentionSpec):
    return (max(spec.left, 0), max(spec.right, 0), spec.scale, spec.softcap if spec.softcap > 0 else 1.0)


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask=None, dropout_p: float = 0.0) -> bool:
    """Whether the Triton kernel implements this call (else flash_attention uses the blockwise kernel)."""
    return (mask is None and dropout_p == 0.0 and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and q.shape[-1] == v.shape[-1] and 1 <= q.shape[-1] <= MAX_HEAD_DIM
            and min(q.shape[-2], k.shape[-2]) > 0)


def supports_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float = 0.0) -> bool:
    """Whether the Triton kernel implements this packed (T, H, D) call (else the blockwise kernel runs it)."""
    return (dropout_p == 0.0 and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and q.shape[-1] == v.shape[-1] and 1 <= q.shape[-1] <= MAX_HEAD_DIM)


def _launch(num_warps, num_stages, block_m, block_n):
    for name, b in (("block_m", block_m), ("block_n", block_n)):
        if not isinstance(b, int) or b < 16 or b & (b - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {b!r}")
    launch = {k_: v_ for k_, v_ in (("num_warps", num_warps), ("num_stages", num_stages)) if v_ is not None}
    return {"fwd": (block_m, block_n), "bwd": (block_m, block_n), "launch": launch}


def triton_attention(q, k, v, *, causal=False, scale=None, window=(-1, -1), softcap=0.0, alibi_slopes=None,
                     return_lse=False, block_m: int = 64, block_n: int = 64, num_warps: int | None = None,
                     num_stages: int | None = None):
    """The Triton kernel. q (B, H, Sq, D), k, v (B, Hkv, Sk, D) -> O (B, H, Sq, D) [, LSE (B, H, Sq) fp32].

    Any strides with a unit last dim; CUDA tensors (CPU tensors under TRITON_INTERPRET=1).
    block_m/block_n (powers of two >= 16) and num_warps/num_stages are launch settings; the
    defaults are untuned guesses (no GPU was available where this was written): see
    benchmarks/attention_gpu.py, which sweeps them."""
    spec = check_inputs(q, k, v, causal=causal, scale=scale, window=window, softcap=softcap,
                        alibi_slopes=alibi_slopes)
    if not supports(q, k, v):
        raise ValueError(f"triton_attention supports fp16/bf16/fp32, head dim 1..{MAX_HEAD_DIM} equal for q and v, "
                         f"non-empty lengths; got {q.dtype}, q {tuple(q.shape)}, v {tuple(v.shape)}")
    q, k, v = [x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v)]
    lay = {"varlen": False, "B": spec.B, "Sq": spec.Sq, "Sk": spec.Sk}
    o, lse = _TritonAttention.apply(q, k, v, spec, _launch(num_warps, num_stages, block_m, block_n), lay)
    return (o, lse) if return_lse else o


def triton_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal=False,
                            scale=None, window=(-1, -1), softcap=0.0, alibi_slopes=None, return_lse=False,
                            block_m: int = 64, block_n: int = 64, num_warps: int | None = None,
                            num_stages: int | None = None):
    """The Triton kernel on packed sequences: q (Tq, H, D), k, v (Tk, Hkv, D) -> O (Tq, H, D) [, LSE (H, Tq)].

    flash_attention_varlen's arguments (varlen.py), no dropout; launch settings as triton_attention."""
    vspec = check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
                         scale=scale, window=window, softcap=softcap, alibi_slopes=alibi_slopes)
    if not supports_varlen(q, k, v):
        raise ValueError(f"triton_attention_varlen supports fp16/bf16/fp32, head dim 1..{MAX_HEAD_DIM} equal for q "
                         f"and v; got {q.dtype}, q {tuple(q.shape)}, v {tuple(v.shape)}")
    q, k, v = [x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v)]
    H = q.shape[1]
    # One spec for the kernel: the per-sequence lengths come from cu_seqlens, the slopes as given.
    spec = check_inputs(q.new_zeros(1, H, 1, q.shape[2]), k.new_zeros(1, k.shape[1], 1, k.shape[2]),
                        v.new_zeros(1, k.shape[1], 1, v.shape[2]), causal=causal, scale=scale, window=window,
                        softcap=softcap)
    spec = dataclasses.replace(spec, alibi=None if alibi_slopes is None else alibi_slopes.reshape(-1, H))
    lay = {"varlen": True, "B": vspec.B, "Sq": max_seqlen_q, "Sk": max_seqlen_k,
           "cu_q": cu_seqlens_q.to(torch.int32).contiguous(), "cu_k": cu_seqlens_k.to(torch.int32).contiguous()}
    o, lse = _TritonAttention.apply(q, k, v, spec, _launch(num_warps, num_stages, block_m, block_n), lay)
    return (o, lse) if return_lse else o
