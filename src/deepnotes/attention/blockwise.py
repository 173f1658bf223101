"""FlashAttention on the CPU: tiles, an online softmax, and a recomputing backward.

Forward (Dao et al. 2022, Alg. 1; FA2's loop order): for each query tile Q_i,
keep per row the running max m (init -inf), sum l (init 0) and accumulator a
(init 0), and for every key tile K_j, V_j that the tile map does not skip:

    S = Q_i K_j^T (scale folded into Q), then softcap, + bias, -inf where hidden
    m' = max(m, rowmax S),   alpha = exp(m - m')          (shift by 0 while m' = -inf)
    P~ = exp(S - m'),  l <- alpha l + rowsum P~,  a <- alpha a + (P~ o Z) V_j
    at the end  O_i = a / l / (1 - p),  LSE_i = m + log l   (l = 0: O = 0, LSE = +inf)

The merge of (m, l, a) states is associative, so O equals softmax(S) V for
any tile sizes. Backward recomputes P from the saved LSE, never storing it:

    D = rowsum(dO o O)
    P = exp(S - LSE);  dV += (P o Z / (1-p))^T dO;  dP = (dO V^T) o Z / (1-p)
    dS = P o (dP - D);  d bias = dS;  dS *= 1 - tanh^2 (softcap)
    dQ += scale * dS K;  dK += dS^T (scale Q)

All of it runs in float32 (float64 for float64 inputs) whatever the input
dtype, and in base 2 (tiles.py: S2 = log2(e) s, exp2, LSE = ln 2 (m + log2 l)),
which is the same math with a cheaper exponential. One tile step covers every batch and head at once as a batched GEMM:
GQA packs the G = H / Hkv query heads that share a key/value head into the
rows of one tile, (B, Hkv, G, br, D) -> (B*Hkv, G*br, D), so K and V are
never repeated and the backward's dK, dV sum over the group inside the GEMM.
Every tile's memory is bounded by block_q x block_k: extra memory is O(N),
not O(N^2). A short query (decode) widens the key tile to keep the same tile
area, so one GEMM covers a long cache.
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .dropout import draw_seed
from .inputs import AttentionSpec, check_inputs, compute_dtype
from .masks import TileMap
from .parallel import num_workers, run_parallel
from .tiles import BLOCK_K, BLOCK_Q, LN2, LOG2E, Tiles, plan_tiles

__all__ = ["blockwise_attention", "plan_tiles", "BLOCK_Q", "BLOCK_K"]


def _chunks(xs: list, n: int) -> list[list]:
    """xs split into at most n contiguous, near-equal, non-empty runs."""
    n = max(1, min(n, len(xs)))
    q, r = divmod(len(xs), n)
    out, a = [], 0
    for t in range(n):
        b = a + q + (t < r)
        out.append(xs[a:b])
        a = b
    return out


def _row_state(i, js, q5, kf, vf, tiles: Tiles):
    """Online softmax of query tile i over key tiles js -> running (m, l, a), each (BHkv, G*br, .)."""
    s = tiles.spec
    r0, r1 = tiles.rows(i)
    qi = tiles.pack(q5, r0, r1)  # (BHkv, G*br, D)
    n, rows = qi.shape[0], qi.shape[1]
    m = qi.new_full((n, rows, 1), -math.inf)
    ell = qi.new_zeros(n, rows, 1)
    acc = qi.new_zeros(n, rows, s.Dv)
    for j in js:
        c0, c1 = tiles.cols(j)
        S, _ = tiles.scores(qi, kf[:, c0:c1], i, j)
        m_new = torch.maximum(m, S.amax(-1, keepdim=True))
        m_safe = torch.where(m_new == -math.inf, 0.0, m_new)  # shift by 0 while nothing is seen
        alpha = torch.exp2(m - m_safe)
        P = S.sub_(m_safe).exp2_()  # P~ = 2^(S - m'), in place
        ell.mul_(alpha).add_(P.sum(-1, keepdim=True))
        if s.dropout_p > 0:
            P.mul_(tiles.keep(i, j, P.dtype))
        acc.mul_(alpha).baddbmm_(P, vf[:, c0:c1])
        m = m_new  # stays -inf until the row sees a key
    return m, ell, acc


def _merge(a, b):
    """Associative merge of two (m, l, acc) states of the same rows (split-KV)."""
    (m1, l1, a1), (m2, l2, a2) = a, b
    m = torch.maximum(m1, m2)
    m_safe = torch.where(m == -math.inf, 0.0, m)
    w1, w2 = torch.exp2(m1 - m_safe), torch.exp2(m2 - m_safe)
    return m, l1 * w1 + l2 * w2, a1 * w1 + a2 * w2


def _forward(qs, k, v, tiles: Tiles):
    """qs = log2e*scale*q (B, H, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv) -> O (B, H, Sq, Dv), LSE (B, H, Sq).

    LSE is natural-log; inside, scores are log2 units."""
    s, tmap = tiles.spec, tiles.tmap
    B, Hkv, G, Sq, Sk, D, Dv = s.B, s.Hkv, s.G, s.Sq, s.Sk, s.D, s.Dv
    q5 = qs.view(B, Hkv, G, Sq, D)
    kf, vf = k.view(B * Hkv, Sk, D), v.view(B * Hkv, Sk, Dv)
    o5 = qs.new_zeros(B, Hkv, G, Sq, Dv)
    lse5 = qs.new_full((B, Hkv, G, Sq), math.inf)
    # Work items: (query tile, key tiles). With fewer query tiles than cores (decode), a row's key
    # tiles are split across cores and the partial states merged after (flash-decoding's split-KV).
    n_split = num_workers() if tmap.n_r < num_workers() else 1
    items = [(i, js) for i in range(tmap.n_r) if tiles.rows(i)[1] > tiles.rows(i)[0]
             for js in _chunks(tmap.row_tiles[i], n_split) if js]
    area = B * Hkv * G * tmap.block_q * tmap.block_k
    costs = [len(js) * area for _, js in items]
    states: list = [None] * len(items)

    def work(idx, _w):
        for t in idx:
            states[t] = _row_state(*items[t], q5, kf, vf, tiles)

    run_parallel(work, costs, sum(costs))
    tiles.release()
    merged: dict[int, tuple] = {}
    for (i, _), st in zip(items, states):
        merged[i] = st if i not in merged else _merge(merged[i], st)
    for i, (m, ell, acc) in merged.items():
        r0, r1 = tiles.rows(i)
        seen = ell > 0
        ell1 = torch.where(seen, ell, torch.ones_like(ell))
        o5[:, :, :, r0:r1] = (acc / ell1).view(B, Hkv, G, r1 - r0, Dv)
        lse2 = torch.where(seen, m + torch.log2(ell1), math.inf)
        lse5[:, :, :, r0:r1] = (lse2 * LN2).view(B, Hkv, G, r1 - r0)
    return o5.view(B, s.H, Sq, Dv), lse5.view(B, s.H, Sq)


def _backward(do, qs, k, v, o, lse, tiles: Tiles, need_dbias: bool):
    """Gradients of O wrt (q, k, v, bias) from dO (B, H, Sq, Dv); P recomputed from LSE."""
    s, tmap = tiles.spec, tiles.tmap
    B, Hkv, G, Sq, Sk, D, Dv = s.B, s.Hkv, s.G, s.Sq, s.Sk, s.D, s.Dv
    Dd = (do * o).sum(-1)  # (B, H, Sq): D_i = rowsum(dO o O)
    q5, do5 = qs.view(B, Hkv, G, Sq, D), do.view(B, Hkv, G, Sq, Dv)
    lse5, D5 = (lse * LOG2E).view(B, Hkv, G, Sq, 1), Dd.view(B, Hkv, G, Sq, 1)  # LSE in log2 units
    kf, vf = k.view(B * Hkv, Sk, D), v.view(B * Hkv, Sk, Dv)
    spans = [tiles.rows(i) for i in range(tmap.n_r)]
    q_t = [tiles.pack(q5, r0, r1) for r0, r1 in spans]
    do_t = [tiles.pack(do5, r0, r1) for r0, r1 in spans]
    lse_t = [tiles.pack(lse5, r0, r1) for r0, r1 in spans]
    D_t = [tiles.pack(D5, r0, r1) for r0, r1 in spans]
    dk, dv = torch.zeros_like(kf), torch.zeros_like(vf)
    one_tile = tmap.n_c == 1
    # Work items: key tiles. Each worker owns its dK, dV tiles and sums dQ (and d bias) into its own
    # buffers, added up after: no two threads ever write the same memory.
    items = [j for j in range(tmap.n_c) if tmap.col_tiles[j] and tiles.cols(j)[1] > tiles.cols(j)[0]]
    area = B * Hkv * G * tmap.block_q * tmap.block_k
    costs = [len(tmap.col_tiles[j]) * area for j in items]
    dq_w: dict[int, list] = {}
    dbias_w: dict[int, torch.Tensor] = {}

    def work(idx, w):
        dq_t = dq_w.setdefault(w, [torch.zeros_like(x) for x in q_t])
        dbias = None
        if need_dbias:
            dbias = dbias_w.setdefault(w, torch.zeros(tiles.bias.shape, dtype=qs.dtype, device=qs.device))
        for t in idx:
            j = items[t]
            c0, c1 = tiles.cols(j)
            kj, vj = kf[:, c0:c1], vf[:, c0:c1]
            dk_j, dv_j = torch.zeros_like(kj), torch.zeros_like(vj)
            for i in tmap.col_tiles[j]:
                r0, r1 = spans[i]
                S, tanh = tiles.scores(q_t[i], kj, i, j, keep_tanh=True)
                P = S.sub_(lse_t[i]).exp2_()  # 2^(S - LSE2) = exp(s - LSE); LSE = +inf rows give 0
                Pd = P
                if s.dropout_p > 0:
                    z = tiles.keep(i, j, P.dtype)
                    Pd = P * z
                dv_j += _per_head_t_mm(Pd, do_t[i], G)  # sum_i Pd_ij dO_i
                dP = torch.bmm(do_t[i], vj.transpose(1, 2), out=tiles.buffer("dP", S.shape))  # (BHkv, G*br, bc)
                if s.dropout_p > 0:
                    dP.mul_(z)
                # When one tile holds all of a row's keys, D = rowsum(P o dP) is the same number
                # computed from this tile (the naive softmax backward's form): then rowsum(dS) = 0
                # up to rounding of rowsum(P) = 1, and e.g. a single key gets dK = 0 exactly.
                Di = torch.linalg.vecdot(P, dP, dim=-1).unsqueeze(-1) if one_tile else D_t[i]
                dS = dP.sub_(Di).mul_(P)
                if dbias is not None:
                    _accumulate_dbias(dbias, dS, s, r0, r1, c0, c1)
                if tanh is not None:
                    dS.mul_(tanh.mul_(tanh).neg_().add_(1.0))  # d softcap(x)/dx = 1 - tanh^2
                dq_t[i].baddbmm_(dS, kj)
                dk_j += _per_head_t_mm(dS, q_t[i], G)  # sum_i dS_ij (scale q_i)
            dk[:, c0:c1] = dk_j
            dv[:, c0:c1] = dv_j

    run_parallel(work, costs, sum(costs))
    tiles.release()
    dq5 = qs.new_zeros(B, Hkv, G, Sq, D)
    for w in sorted(dq_w):
        for (r0, r1), x in zip(spans, dq_w[w]):
            dq5[:, :, :, r0:r1] += x.view(B, Hkv, G, r1 - r0, D)
    dq = dq5.view(B, s.H, Sq, D).mul_(s.scale)
    dk.mul_(LN2)  # dK = dS^T (scale q) and qs = log2e * scale * q
    dbias = None
    if need_dbias:
        dbias = torch.zeros(tiles.bias.shape, dtype=qs.dtype, device=qs.device)
        for w in sorted(dbias_w):
            dbias += dbias_w[w]
    return dq, dk.view(B, Hkv, Sk, D), dv.view(B, Hkv, Sk, Dv), dbias


def _per_head_t_mm(a: torch.Tensor, b: torch.Tensor, G: int) -> torch.Tensor:
    """a^T b over the rows of packed tiles, summed over the G heads of each group.

    a (BHkv, G*br, bc), b (BHkv, G*br, X) -> (BHkv, bc, X). One GEMM per query head
    (reduction length br) and then a sum over G, rather than one GEMM over all G*br
    rows: float32 GEMMs with few output rows reduce almost sequentially, and the
    shorter reductions keep dK, dV as accurate as the naive per-head computation."""
    if G == 1:
        return torch.bmm(a.transpose(1, 2), b)
    n, rows, bc = a.shape
    br = rows // G
    per_head = torch.bmm(a.view(n * G, br, bc).transpose(1, 2), b.view(n * G, br, b.shape[-1]))
    return per_head.view(n, G, bc, b.shape[-1]).sum(1)  # (BHkv*G, bc, X) -> (BHkv, bc, X)


def _accumulate_dbias(dbias, dS, s: AttentionSpec, r0, r1, c0, c1) -> None:
    """Adds dS (B*Hkv, G*br, bc) into dbias (Bm, Hm, Sqm, Skm), summing the broadcast dims."""
    g = dS.view(s.B, s.H, r1 - r0, c1 - c0)
    dims = [d for d, n in enumerate(dbias.shape) if n == 1 and g.shape[d] > 1]
    if dims:
        g = g.sum(dims, keepdim=True)
    rows = slice(r0, r1) if dbias.shape[2] > 1 else slice(None)
    cols = slice(c0, c1) if dbias.shape[3] > 1 else slice(None)
    dbias[:, :, rows, cols] += g


class _BlockwiseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, spec: AttentionSpec, tmap: TileMap, seed):
        cd = compute_dtype(q.dtype)
        # (B, H, Sq, D) with the softmax scale and log2(e) folded in: the kernel works in base 2,
        # since torch's exp2 costs half of its exp on this CPU (measured, AVX2).
        qs = q.to(cd).mul(spec.scale * LOG2E).contiguous()
        kc, vc = k.to(cd).contiguous(), v.to(cd).contiguous()
        tiles = Tiles(spec, tmap, bias, seed, cd, q.device)
        o, lse = _forward(qs, kc, vc, tiles)
        ctx.save_for_backward(qs, kc, vc, o, lse)
        ctx.tiles, ctx.in_dtype = tiles, q.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(lse)
        return o.to(q.dtype), lse

    @staticmethod
    @once_differentiable
    def backward(ctx, do, _dlse):
        qs, kc, vc, o, lse = ctx.saved_tensors
        need_dbias = ctx.bias_dtype is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dbias = _backward(do.to(qs.dtype).contiguous(), qs, kc, vc, o, lse, ctx.tiles, need_dbias)
        t = ctx.in_dtype
        dbias = None if dbias is None else dbias.to(ctx.bias_dtype)
        return dq.to(t), dk.to(t), dv.to(t), dbias, None, None, None


def blockwise_attention(q, k, v, *, causal=False, mask=None, scale=None, window=(-1, -1), softcap=0.0,
                        dropout_p=0.0, generator=None, return_lse=False, block_q: int | None = None,
                        block_k: int | None = None):
    """The CPU kernel (works on any device torch runs): flash_attention's arguments plus the tile sizes.

    q (B, H, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv) -> O (B, H, Sq, Dv) [, LSE (B, H, Sq)]."""
    for name, b in (("block_q", block_q), ("block_k", block_k)):
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
            raise ValueError(f"{name} must be a positive int or None (automatic), got {b!r}")
    spec = check_inputs(q, k, v, causal=causal, mask=mask, scale=scale, window=window, softcap=softcap,
                        dropout_p=dropout_p, generator=generator)
    tmap = plan_tiles(spec, block_q, block_k)
    seed = draw_seed(generator, q.device) if spec.dropout_p > 0 else None
    bias = spec.mask if spec.additive_mask else None
    o, lse = _BlockwiseAttention.apply(q, k, v, bias, spec, tmap, seed)
    return (o, lse) if return_lse else o
