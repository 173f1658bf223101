"""FlashAttention on the CPU: tiles, an online softmax, and a recomputing backward.

Forward (Dao et al. 2022, Alg. 1; FA2's loop order): for each query tile Q_i,
keep per row the running max m (init -inf), sum l (init 0) and accumulator a
(init 0), and for every key tile K_j, V_j that the tile map does not skip:

    S = Q_i K_j^T (scale folded into Q), then softcap, + bias, ALiBi, -inf where hidden
    m' = max(m, rowmax S),   alpha = 2^(m - m')          (shift by 0 while m' = -inf)
    P~ = 2^(S - m'),  l <- alpha l + rowsum P~,  a <- alpha a + (P~ o Z) V_j
    at the end  O_i = a / l / (1 - p),  LSE_i = ln 2 (m + log2 l)   (l = 0: O = 0, LSE = +inf)

The merge of (m, l, a) states is associative, so O equals softmax(S) V for
any tile sizes. The backward recomputes P, never storing it. It keeps the
forward's per-row (m, l), not the LSE:

    E = 2^(S - m)  (so P = E / l),   dO' = dO / l,   D' = rowsum(dO' o O)
    dV += (E o Z/(1-p))^T dO';  dP' = (dO' V^T) o Z/(1-p);  dS = E o (dP' - D')
    d bias = dS;  dS *= 1 - tanh^2 (softcap);  dQ += scale dS K;  dK += dS^T (scale Q)

which is the textbook backward (P = exp(S - LSE), dS = P o (dP - D)) with the
1/l moved onto the (Sq, Dv) operands. Why not exp(S - LSE): LSE = m + log l
is rounded at its own magnitude, so every P of a row is off by the same
factor 1 + O(eps |LSE|). With a large additive bias or ALiBi |LSE| is in the
hundreds; the common factor breaks rowsum(P) = 1, which the naive softmax
backward keeps to rounding, and float32 gradients came out up to 29x the
naive error (dK of a row with one visible key is exactly 0 in the naive
path and was 1e-5 here). S - m is exact for the entries that matter (they
are close to the max), log l is O(log Sk), so E and 1/l carry only the
rounding of S itself, as the naive path. (Rounding the LSE in base e and
converting it back to base 2 for the backward added the same kind of error;
nothing is converted now.) D' in float32 is enough: summing it in float64
changed no ratio of the sweep in tests/attention/test_flash_rule_sweep.py.

All of it runs in float32 (float64 for float64 inputs) whatever the input
dtype, and in base 2 (tiles.py), which is the same math with a cheaper
exponential. A tile step covers a chunk of (batch, kv head) pairs as one
batched GEMM, GQA heads packed into the tile rows (tiles.py), so K and V are
never repeated and the backward's dK, dV sum over the group inside the GEMM.
Every tile's memory is bounded by block_q x block_k: extra memory is O(N).

One call is a list of *problems*, each a dense (B, H, Sq, Sk) attention with
its own tile map: the whole batch for flash_attention, one problem per
sequence for flash_attention_varlen (varlen.py), whose tiles therefore never
cross a sequence boundary and no padding is computed. The work items of all
problems (query tiles x chunks forward, key tiles x chunks backward) go to
one parallel loop (parallel.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from . import _compiled
from .dropout import draw_seed
from .inputs import AttentionSpec, check_inputs, compute_dtype
from .masks import TileMap
from .parallel import num_workers, run_parallel
from .tiles import BLOCK_K, BLOCK_Q, LN2, LOG2E, Chunk, Tiles, _decode_blocks, plan_tiles

__all__ = ["blockwise_attention", "plan_tiles", "BLOCK_Q", "BLOCK_K", "Problem", "forward_problems",
           "backward_problems", "lse_from_stats"]


@dataclass
class Problem:
    """One dense attention problem of a call and the views its results are written into.

    q5 (B, Hkv, G, Sq, D) = log2e * scale * q;  k (B*Hkv, Sk, D);  v (B*Hkv, Sk, Dv)
    o5 (B, Hkv, G, Sq, Dv);  m5, l5 (B, Hkv, G, Sq): the row shift (log2 units, +inf for a row
    that sees no key) and the row sum of 2^(S - m) (0 for such a row).
    Backward only: do5 (B, Hkv, G, Sq, Dv) and the gradient views dq5, dk, dv shaped like q5, k, v."""

    tiles: Tiles
    q5: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o5: torch.Tensor
    m5: torch.Tensor
    l5: torch.Tensor
    do5: torch.Tensor | None = None
    dq5: torch.Tensor | None = None
    dk: torch.Tensor | None = None
    dv: torch.Tensor | None = None


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


# --- forward -------------------------------------------------------------------------------------------

def _row_state(prob: Problem, c: Chunk, i: int, js: list[int]):
    """Online softmax of query tile i, chunk c over key tiles js -> running (m, l, a), each (n, G*br, .)."""
    tiles = prob.tiles
    r0, r1 = tiles.rows(i)
    qi = Tiles.pack(prob.q5, r0, r1, c)  # (n, G*br, D)
    kc, vc = prob.k[c.n0:c.n1], prob.v[c.n0:c.n1]
    dropout = tiles.spec.dropout_p > 0
    m = ell = acc = None
    for j in js:
        c0, c1 = tiles.cols(j)
        S, _ = tiles.scores(qi, kc[:, c0:c1], c, i, j)
        m_new = S.amax(-1, keepdim=True) if m is None else torch.maximum(m, S.amax(-1, keepdim=True))
        m_safe = torch.nan_to_num(m_new, nan=math.nan, neginf=0.0)  # shift by 0 while nothing is seen
        P = S.sub_(m_safe).exp2_()  # P~ = 2^(S - m'), in place
        if m is None:  # first tile: nothing to rescale
            ell = P.sum(-1, keepdim=True)
            if dropout:
                P.mul_(tiles.keep(c, i, j, P.dtype))
            acc = torch.bmm(P, vc[:, c0:c1])
        else:
            alpha = (m - m_safe).exp2_()
            ell.mul_(alpha).add_(P.sum(-1, keepdim=True))
            if dropout:
                P.mul_(tiles.keep(c, i, j, P.dtype))
            acc.mul_(alpha).baddbmm_(P, vc[:, c0:c1])
        m = m_new  # stays -inf until the row sees a key
    return m, ell, acc


def _merge(a, b):
    """Associative merge of two (m, l, acc) states of the same rows (split-KV)."""
    (m1, l1, a1), (m2, l2, a2) = a, b
    m = torch.maximum(m1, m2)
    m_safe = torch.where(m == -math.inf, 0.0, m)
    w1, w2 = torch.exp2(m1 - m_safe), torch.exp2(m2 - m_safe)
    return m, l1 * w1 + l2 * w2, a1 * w1 + a2 * w2


def _write_state(prob: Problem, c: Chunk, i: int, state) -> None:
    """O = a / l and the row stats (m, l) of one finished (query tile, chunk) into the problem's views."""
    m, ell, acc = state
    r0, r1 = prob.tiles.rows(i)
    nb, nh, G = c.b1 - c.b0, c.h1 - c.h0, prob.q5.shape[2]
    seen = ell > 0
    ell1 = torch.where(seen, ell, torch.ones_like(ell))
    Tiles.unpack(prob.o5, r0, r1, c).copy_((acc / ell1).view(nb, nh, G, r1 - r0, -1))
    Tiles.unpack(prob.m5.unsqueeze(-1), r0, r1, c).copy_(
        torch.where(seen, m, math.inf).view(nb, nh, G, r1 - r0, 1))
    Tiles.unpack(prob.l5.unsqueeze(-1), r0, r1, c).copy_(ell.view(nb, nh, G, r1 - r0, 1))


def _write_empty(prob: Problem, c: Chunk, i: int) -> None:
    """Query tile i of chunk c sees no key tile: O = 0, m = +inf, l = 0."""
    r0, r1 = prob.tiles.rows(i)
    Tiles.unpack(prob.o5, r0, r1, c).zero_()
    Tiles.unpack(prob.m5.unsqueeze(-1), r0, r1, c).fill_(math.inf)
    Tiles.unpack(prob.l5.unsqueeze(-1), r0, r1, c).zero_()


def forward_problems(problems: list[Problem]) -> None:
    """Runs the forward of every problem, writing every row of o5, m5, l5 (they may start uninitialised)."""
    keys = []  # (problem, chunk, query tile)
    for p, prob in enumerate(problems):
        t = prob.tiles
        for c in t.chunks(buffers=1):  # S
            for i in range(t.tmap.n_r):
                if t.rows(i)[1] <= t.rows(i)[0]:
                    continue
                if t.tmap.row_tiles[i]:
                    keys.append((p, c, i))
                else:
                    _write_empty(prob, c, i)
    # With fewer work items than cores (decode), a row's key tiles are split across cores and the
    # partial states merged after (flash-decoding's split-KV).
    n_split = num_workers() if len(keys) < num_workers() else 1
    items = [(p, c, i, js) for p, c, i in keys for js in _chunks(problems[p].tiles.tmap.row_tiles[i], n_split)]
    costs = [len(js) * c.n * problems[p].tiles.spec.G * problems[p].tiles.tmap.block_q
             * problems[p].tiles.tmap.block_k for p, c, _, js in items]
    owners: dict[tuple, int] = {}
    for p, c, i, _ in items:
        owners[(p, c, i)] = owners.get((p, c, i), 0) + 1
    states: list = [None] * len(items)

    def work(idx, _w):
        for t in idx:
            p, c, i, js = items[t]
            st = _row_state(problems[p], c, i, js)
            if owners[(p, c, i)] == 1:
                _write_state(problems[p], c, i, st)
            else:
                states[t] = st

    run_parallel(work, costs, sum(costs))
    merged: dict[tuple, tuple] = {}
    for (p, c, i, _), st in zip(items, states):
        if st is not None:
            key = (p, c, i)
            merged[key] = st if key not in merged else _merge(merged[key], st)
    for (p, c, i), st in merged.items():
        _write_state(problems[p], c, i, st)
    for prob in problems:
        prob.tiles.release()


def lse_from_stats(m: torch.Tensor, ell: torch.Tensor) -> torch.Tensor:
    """Natural-log LSE = ln 2 (m + log2 l) from the row stats; +inf where l = 0 (no key seen)."""
    seen = ell > 0
    return torch.where(seen, (m + torch.log2(torch.where(seen, ell, 1.0))) * LN2, math.inf)


# --- backward ------------------------------------------------------------------------------------------

def _add_per_head_t_mm(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, G: int) -> None:
    """out += a^T b over the rows of packed tiles, summed over the G heads of each group.

    out (n, bc, X), a (n, G*br, bc), b (n, G*br, X). One GEMM per query head
    (reduction length br) and then a sum over G, rather than one GEMM over all G*br
    rows: float32 GEMMs with few output rows reduce almost sequentially, and the
    shorter reductions keep dK, dV as accurate as the naive per-head computation."""
    if G == 1:
        out.baddbmm_(a.transpose(1, 2), b)
        return
    n, rows, bc = a.shape
    br = rows // G
    per_head = torch.bmm(a.view(n * G, br, bc).transpose(1, 2), b.view(n * G, br, b.shape[-1]))
    out += per_head.view(n, G, bc, b.shape[-1]).sum(1)  # (n*G, bc, X) -> (n, bc, X)


def _accumulate_dbias(dbias, dS, s: AttentionSpec, c: Chunk, r0, r1, c0, c1) -> None:
    """Adds dS (n, G*br, bc) of chunk c into dbias (Bm, Hm, Sqm, Skm), summing the broadcast dims."""
    g = dS.view(c.b1 - c.b0, (c.h1 - c.h0) * s.G, r1 - r0, c1 - c0)  # (nb, heads of the chunk, br, bc)
    dims = [d for d, n in enumerate(dbias.shape) if n == 1 and g.shape[d] > 1]
    if dims:
        g = g.sum(dims, keepdim=True)
    idx = (slice(c.b0, c.b1) if dbias.shape[0] > 1 else slice(None),
           slice(c.h0 * s.G, c.h1 * s.G) if dbias.shape[1] > 1 else slice(None),
           slice(r0, r1) if dbias.shape[2] > 1 else slice(None),
           slice(c0, c1) if dbias.shape[3] > 1 else slice(None))
    dbias[idx] += g


class _Packed:
    """A problem's per-query-tile backward operands, packed once: (B*Hkv, G*br, X) each."""

    def __init__(self, prob: Problem):
        t = prob.tiles
        # dO' = dO / l and D' = rowsum(dO' o O). A row that sees no key has l = 0 (divide by 1
        # instead: its E = 2^(S - inf) is 0, so it contributes nothing) and O = 0, so D' = 0.
        dos = prob.do5 / prob.l5.clamp(min=1.0).unsqueeze(-1)
        Dd = torch.linalg.vecdot(dos, prob.o5).unsqueeze(-1)
        spans = [t.rows(i) for i in range(t.tmap.n_r)]
        self.q = [Tiles.pack(prob.q5, r0, r1) for r0, r1 in spans]
        self.do = [Tiles.pack(dos, r0, r1) for r0, r1 in spans]
        self.m = [Tiles.pack(prob.m5.unsqueeze(-1), r0, r1) for r0, r1 in spans]
        self.D = [Tiles.pack(Dd, r0, r1) for r0, r1 in spans]
        self.l = [Tiles.pack(prob.l5.unsqueeze(-1), r0, r1) for r0, r1 in spans]


def backward_problems(problems: list[Problem], need_dbias: bool) -> list[torch.Tensor | None]:
    """Accumulates every problem's dq5 (unscaled: x scale after), dk (x ln 2 after) and dv, all zero
    on entry; returns each problem's d bias (None without an additive bias or when not needed)."""
    packed = [_Packed(prob) for prob in problems]
    items = []  # (problem, chunk, key tile)
    for p, prob in enumerate(problems):
        t = prob.tiles
        for c in t.chunks(buffers=2):  # S and dP
            items += [(p, c, j) for j in range(t.tmap.n_c) if t.tmap.col_tiles[j] and t.cols(j)[1] > t.cols(j)[0]]
    costs = [len(problems[p].tiles.tmap.col_tiles[j]) * c.n * problems[p].tiles.spec.G
             * problems[p].tiles.tmap.block_q * problems[p].tiles.tmap.block_k for p, c, j in items]
    # Each worker owns its dK, dV tiles and sums dQ (and d bias) into its own buffers, added up
    # after in worker order: no two threads write the same memory, and results are reproducible.
    dq_w: dict[int, dict[tuple, torch.Tensor]] = {}
    dbias_w: dict[int, dict[int, torch.Tensor]] = {}

    def work(idx, w):
        dq_own = dq_w.setdefault(w, {})
        dbias_own = dbias_w.setdefault(w, {})
        for t in idx:
            p, c, j = items[t]
            prob, pk = problems[p], packed[p]
            tiles, s = prob.tiles, prob.tiles.spec
            dbias = None
            if need_dbias and tiles.bias is not None:
                if p not in dbias_own:
                    dbias_own[p] = torch.zeros(tiles.bias.shape, dtype=tiles.dtype, device=tiles.device)
                dbias = dbias_own[p]
            c0, c1 = tiles.cols(j)
            kj, vj = prob.k[c.n0:c.n1, c0:c1], prob.v[c.n0:c.n1, c0:c1]
            dk_j, dv_j = torch.zeros_like(kj), torch.zeros_like(vj)
            one_tile = tiles.tmap.n_c == 1
            for i in tiles.tmap.col_tiles[j]:
                r0, r1 = tiles.rows(i)
                qi, doi = pk.q[i][c.n0:c.n1], pk.do[i][c.n0:c.n1]
                S, tanh = tiles.scores(qi, kj, c, i, j, keep_tanh=True)
                E = S.sub_(pk.m[i][c.n0:c.n1]).exp2_()  # 2^(S - m) = l P; m = +inf rows give 0
                Ed = E
                if s.dropout_p > 0:
                    z = tiles.keep(c, i, j, E.dtype)
                    Ed = E * z
                _add_per_head_t_mm(dv_j, Ed, doi, s.G)  # sum_i P_ij Z_ij/(1-p) dO_i
                dP = torch.bmm(doi, vj.transpose(1, 2), out=tiles.buffer("dP", S.shape))  # (n, G*br, bc)
                if s.dropout_p > 0:
                    dP.mul_(z)
                # When one tile holds all of a row's keys, D' = rowsum(E o dP') / l is the same number
                # computed from this tile (the naive softmax backward's form): then rowsum(dS) = 0
                # up to rounding of rowsum(P) = 1, and e.g. a single key gets dK = 0 exactly.
                if one_tile:
                    Di = torch.linalg.vecdot(E, dP, dim=-1).unsqueeze(-1).div_(pk.l[i][c.n0:c.n1].clamp(min=1.0))
                else:
                    Di = pk.D[i][c.n0:c.n1]
                dS = dP.sub_(Di).mul_(E)
                if dbias is not None:
                    _accumulate_dbias(dbias, dS, s, c, r0, r1, c0, c1)
                if tanh is not None:
                    dS.mul_(tanh.mul_(tanh).neg_().add_(1.0))  # d softcap(x)/dx = 1 - tanh^2
                key = (p, c, i)
                if key not in dq_own:
                    dq_own[key] = torch.zeros_like(qi)
                dq_own[key].baddbmm_(dS, kj)
                _add_per_head_t_mm(dk_j, dS, qi, s.G)  # sum_i dS_ij (log2e scale q_i)
            prob.dk[c.n0:c.n1, c0:c1] = dk_j
            prob.dv[c.n0:c.n1, c0:c1] = dv_j

    run_parallel(work, costs, sum(costs))
    for prob in problems:
        prob.tiles.release()
    G = [prob.q5.shape[2] for prob in problems]
    for w in sorted(dq_w):
        for (p, c, i), x in dq_w[w].items():
            r0, r1 = problems[p].tiles.rows(i)
            Tiles.unpack(problems[p].dq5, r0, r1, c).add_(x.view(c.b1 - c.b0, c.h1 - c.h0, G[p], r1 - r0, -1))
    out: list[torch.Tensor | None] = []
    for p in range(len(problems)):
        parts = [dbias_w[w][p] for w in sorted(dbias_w) if p in dbias_w[w]]
        out.append(sum(parts[1:], parts[0]) if parts else None)
    return out


# --- autograd ------------------------------------------------------------------------------------------

class _BlockwiseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, spec: AttentionSpec, tmap: TileMap | None, seed,
                compiled_plan: _compiled.Plan | None = None):
        cd = compute_dtype(q.dtype)
        B, H, Hkv, G, Sq, Sk, D, Dv = spec.B, spec.H, spec.Hkv, spec.G, spec.Sq, spec.Sk, spec.D, spec.Dv
        kc, vc = k.to(cd).contiguous(), v.to(cd).contiguous()
        tiles = None
        if compiled_plan is not None:
            # In C++ (_compiled.py): the same o, m, l (and the LSE); the kernel scales q by
            # log2(e) * scale itself, so q is saved unscaled (its backward expects that).
            qs = q.to(cd).contiguous()
            o, m, ell, lse = _compiled.flash_fwd(qs, kc, vc, spec.right == 0, spec.scale, compiled_plan)
        else:
            tiles = Tiles(spec, tmap, bias, seed, cd, q.device)
            # (B, H, Sq, D) with the softmax scale and log2(e) folded in: the kernel works in base 2.
            qs = q.to(cd).mul(spec.scale * LOG2E).contiguous()
            o = qs.new_empty(B, H, Sq, Dv)
            m, ell = qs.new_empty(B, H, Sq), qs.new_empty(B, H, Sq)
            prob = Problem(tiles, qs.view(B, Hkv, G, Sq, D), kc.view(B * Hkv, Sk, D), vc.view(B * Hkv, Sk, Dv),
                           o.view(B, Hkv, G, Sq, Dv), m.view(B, Hkv, G, Sq), ell.view(B, Hkv, G, Sq))
            forward_problems([prob])
            lse = lse_from_stats(m, ell)
        ctx.save_for_backward(qs, kc, vc, o, m, ell)
        ctx.tiles, ctx.in_dtype, ctx.spec, ctx.compiled_plan = tiles, q.dtype, spec, compiled_plan
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(lse)
        return o.to(q.dtype), lse

    @staticmethod
    @once_differentiable
    def backward(ctx, do, _dlse):
        qs, kc, vc, o, m, ell = ctx.saved_tensors
        s, t = ctx.spec, ctx.in_dtype
        if ctx.compiled_plan is not None:
            # qs is the unscaled q here; the backward runs over the plan's tiles
            dq, dk, dv = _compiled.flash_bwd(qs, kc, vc, o, m, ell, do.to(qs.dtype).contiguous(),
                                             s.right == 0, s.scale, ctx.compiled_plan)
            return dq.to(t), dk.to(t), dv.to(t), None, None, None, None, None
        tiles: Tiles = ctx.tiles
        B, Hkv, G, Sq, Sk, D, Dv = s.B, s.Hkv, s.G, s.Sq, s.Sk, s.D, s.Dv
        need_dbias = ctx.bias_dtype is not None and ctx.needs_input_grad[3]
        dq = torch.zeros_like(qs)
        dk, dv = torch.zeros_like(kc), torch.zeros_like(vc)
        prob = Problem(tiles, qs.view(B, Hkv, G, Sq, D), kc.view(B * Hkv, Sk, D), vc.view(B * Hkv, Sk, Dv),
                       o.view(B, Hkv, G, Sq, Dv), m.view(B, Hkv, G, Sq), ell.view(B, Hkv, G, Sq),
                       do5=do.to(qs.dtype).contiguous().view(B, Hkv, G, Sq, Dv), dq5=dq.view(B, Hkv, G, Sq, D),
                       dk=dk.view(B * Hkv, Sk, D), dv=dv.view(B * Hkv, Sk, Dv))
        (dbias,) = backward_problems([prob], need_dbias)
        dq.mul_(s.scale)
        dk.mul_(LN2)  # dK = dS^T (scale q) and qs = log2e * scale * q
        dbias = None if dbias is None else dbias.to(ctx.bias_dtype)
        return dq.to(t), dk.to(t), dv.to(t), dbias, None, None, None, None


def blockwise_attention(q, k, v, *, causal=False, mask=None, scale=None, window=(-1, -1), softcap=0.0,
                        dropout_p=0.0, generator=None, return_lse=False, alibi_slopes=None,
                        block_q: int | None = None, block_k: int | None = None):
    """The CPU kernel (works on any device torch runs): flash_attention's arguments plus the tile sizes.

    q (B, H, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv) -> O (B, H, Sq, Dv) [, LSE (B, H, Sq)]."""
    check_block_sizes(block_q, block_k)
    spec = check_inputs(q, k, v, causal=causal, mask=mask, scale=scale, window=window, softcap=softcap,
                        dropout_p=dropout_p, generator=generator, alibi_slopes=alibi_slopes)
    seed = draw_seed(generator, q.device) if spec.dropout_p > 0 else None
    bias = spec.mask if spec.additive_mask else None
    # The compiled kernel (_compiled.py; when it builds) takes the dense case (no bias, ALiBi, band
    # other than causal, softcap or dropout; float32/64 on the CPU; automatic tiles), its backward
    # over the tiles of the dense plan (without the band-aware search of plan_tiles: ~0.4 ms), and
    # the same with a bool mask, forward and backward over plan_tiles' map (cached per mask).
    tmap, plan = None, None
    if _compiled.supports(q, k, v, spec, bias, block_q, block_k) and _compiled.load_kernel() is not None:
        if spec.mask is None:
            plan = _compiled.Plan(*_decode_blocks(spec, BLOCK_Q, BLOCK_K))
        else:
            t = plan_tiles(spec)
            plan = _compiled.Plan(t.block_q, t.block_k, t.cls_tensor(), spec.mask)
    else:
        tmap = plan_tiles(spec, block_q, block_k)
    o, lse = _BlockwiseAttention.apply(q, k, v, bias, spec, tmap, seed, plan)
    return (o, lse) if return_lse else o


def check_block_sizes(block_q, block_k) -> None:
    for name, b in (("block_q", block_q), ("block_k", block_k)):
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
            raise ValueError(f"{name} must be a positive int or None (automatic), got {b!r}")
