"""The tiles of one blockwise-attention problem: their sizes, slicing, scores, masking and buffers.

plan_tiles picks the tile sizes and derives the tile map (masks.py) once per
problem. Tiles then serves the kernels in blockwise.py. A tile step covers a
query tile i, a key tile j and a *chunk* of the (batch, kv head) pairs:

    chunk = batches b0:b1 and kv heads h0:h1 (all heads, or a head range of one batch),
    n = (b1 - b0) * (h1 - h0) rows of the batched GEMM

GQA packs the G = H / Hkv query heads of a kv head into the rows of a tile,
(B, Hkv, G, S, D) -> (B*Hkv, G*br, D), so K and V are never repeated. The
chunk is sized so that one score tile, n x G*br x bc floats, stays within
TILE_BYTES. Two costs pull its size apart (measured on the 2-core AVX-512
machine of issue 12, D = 64): a step's five or so elementwise passes are
cheaper in L2 (one thread, a step alone: 8 heads x 256 x 512 = 4 MiB ran at
43 GFLOP/s, 1 MiB at 138), but each step is ~15 torch calls whose Python
parts take the GIL, and with two workers small steps queue on it (N = 1024,
two threads: forward 58 ms with 512 KiB steps, 23 ms with 1 MiB, 21 ms with
4 MiB; forward + backward 115 ms with 1 MiB, 74 ms with 4 MiB). 4 MiB is the
better compromise at the thread counts this runs with.

A tile's scores, in log2 units (S2 = log2(e) s, because torch's exp2 costs
about half of its exp on these CPUs), are

    S2 = (log2e * scale * Q_i) K_j^T                        scale folded into Q
    S2 = c2 tanh(S2 / c2),  c2 = log2e * softcap            = log2e * softcap * tanh(s / softcap)
    S2 = S2 + log2e * bias                                  one rounding: a fused multiply-add
    S2 = S2 - (log2e * slope) * |i + Sk - Sq - j|           ALiBi (alibi.py), per tile
    S2 = -inf where the band or a bool mask hides (i, j)    by adding a cached 0 / -inf tile

and a tile's dropout keep-mask is drawn at the problem's coordinates in the
call (dropout.py), so a varlen sequence's Z does not depend on its neighbours.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .alibi import distance
from .dropout import keep_tile
from .inputs import AttentionSpec
from .masks import PARTIAL, TileMap, mask_grids, pool_grids, structure_visible, tile_map

__all__ = ["Tiles", "Chunk", "DropoutCoords", "plan_tiles", "head_chunks", "pairs_per_chunk", "LOG2E", "LN2",
           "BLOCK_Q", "BLOCK_K", "PLAN_CACHE_SIZE", "BLOCK_CANDIDATES", "GRID", "TILE_OVERHEAD", "TILE_BYTES"]

LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)
BLOCK_Q = 256  # query rows per tile (per head; x G under GQA)
BLOCK_K = 512  # keys per tile
# Tile sizes tried for masked / banded inputs (multiples of GRID, where the mask is reduced once);
# 128 x 128 is FlexAttention's block, the granularity block-sparse layouts usually come in.
BLOCK_CANDIDATES = ((256, 512), (128, 256), (128, 128), (64, 128), (64, 64))
GRID = 64
# Fixed cost of one tile step in units of score elements (per head, D = 64): ~60 us of torch calls
# against ~1.6 ns per element on the 2-core AVX-512 machine of issue 12 (block-sparse N = 4096:
# 128 x 128 tiles 68 ms, 128 x 256 110 ms, 64 x 64 137 ms; one thread each).
TILE_OVERHEAD = 40_000
PLAN_CACHE_SIZE = 4  # tile maps of the last masks seen (a training loop passes the same mask each step)
# Bytes of one score tile (all rows of a chunk): few enough steps for two workers, see above.
TILE_BYTES = 4 << 20


@dataclass(frozen=True)
class Chunk:
    """Batches b0:b1 x kv heads h0:h1 of a problem: rows n0:n1 of the (B*Hkv) GEMM batch."""

    b0: int
    b1: int
    h0: int
    h1: int
    Hkv: int

    @property
    def n0(self) -> int:
        return self.b0 * self.Hkv + self.h0

    @property
    def n1(self) -> int:
        return (self.b1 - 1) * self.Hkv + self.h1

    @property
    def n(self) -> int:
        return self.n1 - self.n0


def pairs_per_chunk(spec: AttentionSpec, block_q: int, block_k: int, buffers: int, dtype: torch.dtype) -> int:
    """(batch, kv head) pairs per tile step: `buffers` tiles of G*block_q x block_k in TILE_BYTES (at least 1)."""
    elements = TILE_BYTES // (torch.finfo(dtype).bits // 8) // buffers
    return max(1, elements // max(1, spec.G * block_q * block_k))


def head_chunks(B: int, Hkv: int, per_chunk: int) -> list[Chunk]:
    """(batch, kv head) pairs in chunks of at most per_chunk: whole batches, or head ranges of one batch."""
    per_chunk = max(1, per_chunk)
    if per_chunk >= Hkv:
        nb = per_chunk // Hkv
        return [Chunk(b, min(B, b + nb), 0, Hkv, Hkv) for b in range(0, B, nb)]
    return [Chunk(b, b + 1, h, min(Hkv, h + per_chunk), Hkv) for b in range(B) for h in range(0, Hkv, per_chunk)]


@dataclass(frozen=True)
class DropoutCoords:
    """Where a problem sits in the call's dropout grid: Z(bh, row, col) with the index
    ((bh * Sq_total) + row_base + i) * Sk_total + col_base + j, bh = b * H + h (batch_base + b for varlen)."""

    row_base: int = 0
    col_base: int = 0
    Sq_total: int | None = None  # None: the problem's own Sq (a batched call)
    Sk_total: int | None = None


class Tiles:
    """Slicing of one problem's tensors into packed tiles; owns the per-tile masking and buffers."""

    def __init__(self, spec: AttentionSpec, tmap: TileMap, bias: torch.Tensor | None, seed: int | None,
                 dtype: torch.dtype, device, coords: DropoutCoords = DropoutCoords()):
        self.spec, self.tmap, self.seed, self.dtype = spec, tmap, seed, dtype
        self.bias = None if bias is None else bias.to(dtype)  # natural units: added as fma(bias, log2e, S2)
        self.cap2 = spec.softcap * LOG2E  # softcap in log2 units: log2e*c*tanh(u/c) = c2*tanh(log2e*u/c2)
        # -log2e * slope, one rounding of the exact product, as (Bs, Hkv, G, 1, 1)
        self.slope2 = None
        if spec.alibi is not None:
            s2 = (spec.alibi.to(torch.float64) * -LOG2E).to(dtype)
            self.slope2 = s2.view(s2.shape[0], spec.Hkv, spec.G, 1, 1)
        self.coords = coords
        self.device = device
        self._band: dict[tuple[int, int, int], torch.Tensor | None] = {}
        self._dist: dict[tuple[int, int, int], torch.Tensor] = {}
        self._local = threading.local()  # score buffers, one set per worker thread

    def rows(self, i):
        return self.tmap.rows(i, self.spec.Sq)

    def cols(self, j):
        return self.tmap.cols(j, self.spec.Sk)

    def chunks(self, buffers: int) -> list[Chunk]:
        """Chunks of (batch, kv head) pairs such that `buffers` score tiles of a step fit in TILE_BYTES."""
        s, tm = self.spec, self.tmap
        return head_chunks(s.B, s.Hkv, pairs_per_chunk(s, tm.block_q, tm.block_k, buffers, self.dtype))

    @staticmethod
    def pack(x5: torch.Tensor, r0: int, r1: int, c: Chunk | None = None) -> torch.Tensor:
        """(B, Hkv, G, S, X) -> rows r0:r1 of chunk c (all pairs if None) as (n, G*br, X)."""
        if c is not None:
            x5 = x5[c.b0:c.b1, c.h0:c.h1]
        nb, nh, G, _, X = x5.shape
        return x5[:, :, :, r0:r1].reshape(nb * nh, G * (r1 - r0), X)

    @staticmethod
    def unpack(x5: torch.Tensor, r0: int, r1: int, c: Chunk) -> torch.Tensor:
        """The (nb, nh, G, br, X) view of chunk c, rows r0:r1, in a (B, Hkv, G, S, X) tensor (to write into)."""
        return x5[c.b0:c.b1, c.h0:c.h1, :, r0:r1]

    def release(self) -> None:
        """Drops the score buffers (the object itself lives on in autograd's ctx until backward)."""
        self._local = threading.local()

    def buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A reused contiguous (shape) buffer of this thread: tiles are written into warm memory."""
        n = math.prod(shape)
        buf = getattr(self._local, name, None)
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=self.dtype, device=self.device)
            setattr(self._local, name, buf)
        return buf[:n].view(shape)

    def _broadcast_tile(self, m: torch.Tensor, c: Chunk, r0, r1, c0, c1) -> torch.Tensor:
        """A (Bm, Hm, Sqm, Skm) mask's tile for chunk c, shaped to broadcast against (nb, nh, G, br, bc)."""
        s = self.spec
        m = m[:, :, r0:r1] if m.shape[2] > 1 else m
        m = m[:, :, :, c0:c1] if m.shape[3] > 1 else m
        m = m[c.b0:c.b1] if m.shape[0] > 1 else m
        if m.shape[1] > 1:  # (Bm, H, ...) -> (Bm, Hkv, G, ...), this chunk's kv heads
            return m.reshape(m.shape[0], s.Hkv, s.G, *m.shape[2:])[:, c.h0:c.h1]
        return m.unsqueeze(1)

    def _band_bias(self, r0, r1, c0, c1) -> torch.Tensor | None:
        """0 / -inf (br, bc) for the causal/window band; it depends only on c0 - r0 and the sizes."""
        key = (r1 - r0, c1 - c0, c0 - r0)
        if key not in self._band:
            rows = torch.arange(r0, r1, device=self.device)
            cols = torch.arange(c0, c1, device=self.device)
            vis = structure_visible(rows, cols, self.spec)
            self._band[key] = None if vis is None else _hidden_to_bias(vis, self.dtype)
        return self._band[key]

    def _distance(self, r0, r1, c0, c1) -> torch.Tensor:
        """|i + Sk - Sq - j| over the tile, (br, bc); like the band it depends only on c0 - r0 and the sizes."""
        key = (r1 - r0, c1 - c0, c0 - r0)
        if key not in self._dist:
            rows = torch.arange(r0, r1, device=self.device)
            cols = torch.arange(c0, c1, device=self.device)
            self._dist[key] = distance(rows, cols, self.spec.offset, self.dtype)
        return self._dist[key]

    def scores(self, qi, kj, c: Chunk, i, j, keep_tanh=False):
        """S2 for query tile i, key tile j, chunk c: (n, G*br, bc), plus tanh(S/softcap) if asked (backward)."""
        s, (r0, r1), (c0, c1) = self.spec, self.rows(i), self.cols(j)
        S = torch.bmm(qi, kj.transpose(1, 2), out=self.buffer("S", (qi.shape[0], qi.shape[1], c1 - c0)))
        t = None
        if s.softcap > 0:
            if keep_tanh:
                t = torch.tanh(S.div_(self.cap2))
                S = torch.mul(t, self.cap2, out=S)
            else:
                S.div_(self.cap2).tanh_().mul_(self.cap2)
        S5 = S.view(c.b1 - c.b0, c.h1 - c.h0, s.G, r1 - r0, c1 - c0)
        if self.bias is not None:
            # add with alpha is one fused multiply-add: S2 + log2e*b rounded once, as the naive s + b
            S5.add_(self._broadcast_tile(self.bias, c, r0, r1, c0, c1), alpha=LOG2E)
        if self.slope2 is not None:
            slope = self.slope2[c.b0:c.b1] if self.slope2.shape[0] > 1 else self.slope2
            S5.addcmul_(slope[:, c.h0:c.h1], self._distance(r0, r1, c0, c1))
        if self.tmap.cls[i][j] == PARTIAL:
            # Hidden scores become -inf by adding a 0/-inf bias: a broadcast add is vectorised along
            # the keys, where a broadcast masked_fill_ is ~25x slower on this CPU (measured).
            hidden = self._band_bias(r0, r1, c0, c1)
            if s.bool_mask:
                mb = _hidden_to_bias(self._broadcast_tile(s.mask, c, r0, r1, c0, c1), self.dtype)
                hidden = mb if hidden is None else mb + hidden
            if hidden is not None:
                S5.add_(hidden)
        return S, t

    def keep(self, c: Chunk, i, j, dtype) -> torch.Tensor:
        """Z / (1 - p) for tile (i, j) of chunk c, packed as (n, G*br, bc)."""
        s, (r0, r1), (c0, c1), co = self.spec, self.rows(i), self.cols(j), self.coords
        heads = torch.arange(c.h0 * s.G, c.h1 * s.G, device=self.device)
        bh = (torch.arange(c.b0, c.b1, device=self.device)[:, None] * s.H + heads[None, :]).reshape(-1)
        rows = torch.arange(r0, r1, device=self.device) + co.row_base
        cols = torch.arange(c0, c1, device=self.device) + co.col_base
        Sq_t = s.Sq if co.Sq_total is None else co.Sq_total
        Sk_t = s.Sk if co.Sk_total is None else co.Sk_total
        z = keep_tile(self.seed, s.dropout_p, bh, rows, cols, Sq_t, Sk_t)  # (n*G, br, bc)
        return z.view(c.n, s.G * (r1 - r0), c1 - c0).to(dtype).mul_(1.0 / (1.0 - s.dropout_p))


def _hidden_to_bias(visible: torch.Tensor, dtype) -> torch.Tensor:
    """bool visibility -> additive 0 (visible) / -inf (hidden)."""
    zero = torch.zeros((), dtype=dtype, device=visible.device)
    return torch.where(visible, zero, torch.full((), -math.inf, dtype=dtype, device=visible.device))


def _decode_blocks(spec: AttentionSpec, block_q: int, block_k: int) -> tuple[int, int]:
    """A short query (decode) gets wider key tiles of the same area."""
    if spec.Sq < block_q:
        block_k = max(block_k, (block_q * block_k) // max(1, spec.Sq))
        block_q = max(1, spec.Sq)
    return block_q, max(1, min(block_k, max(1, spec.Sk)))


_PLANS: OrderedDict = OrderedDict()
_PLANS_LOCK = threading.Lock()


def _plan_key(spec: AttentionSpec, block_q, block_k):
    """Identifies a mask's plan: its memory and version counter (bumped by every in-place change) and
    the call's shape. The cache holds the mask itself, so its memory cannot be reused meanwhile.
    None for a mask made under torch.inference_mode (it has no version counter): not cached."""
    m = spec.mask
    if m.is_inference():
        return None
    return (m.data_ptr(), m._version, tuple(m.shape), tuple(m.stride()), m.dtype, str(m.device), spec.B, spec.H,
            spec.Hkv, spec.Sq, spec.Sk, spec.left, spec.right, block_q, block_k)


def plan_tiles(spec: AttentionSpec, block_q: int | None = None, block_k: int | None = None) -> TileMap:
    """The tile map of one problem. Given sizes are used as they are (widened for decode); otherwise
    dense inputs take BLOCK_Q x BLOCK_K and masked/banded ones the candidate size that minimises

        (visible tiles) x (TILE_OVERHEAD x steps per tile + B*H*block_q*block_k)

    (steps per tile: the number of head chunks, see Tiles.chunks) so a fine-grained sparse mask
    gets tiles small enough to skip its empty blocks, while a dense one keeps tiles large enough
    that the per-step cost of ~15 torch calls stays small.

    Reducing a mask to tile grids reads all of it (~14 ms for 4096 x 4096 on one core), so the
    plans of the last PLAN_CACHE_SIZE masks are kept: passing the same, unmodified mask tensor
    again reuses its plan, as FlexAttention reuses a BlockMask."""
    if spec.mask is None:
        return _plan(spec, block_q, block_k)
    key = _plan_key(spec, block_q, block_k)
    if key is None:
        return _plan(spec, block_q, block_k)
    with _PLANS_LOCK:
        hit = _PLANS.get(key)
        if hit is not None:
            _PLANS.move_to_end(key)
            return hit[1]
    tmap = _plan(spec, block_q, block_k)
    with _PLANS_LOCK:
        _PLANS[key] = (spec.mask, tmap)
        while len(_PLANS) > PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
    return tmap


def _plan(spec: AttentionSpec, block_q: int | None, block_k: int | None) -> TileMap:
    if block_q is not None or block_k is not None:
        return tile_map(spec, *_decode_blocks(spec, block_q or BLOCK_Q, block_k or BLOCK_K))
    if spec.Sq < BLOCK_Q or not (spec.has_structure or spec.mask is not None):
        return tile_map(spec, *_decode_blocks(spec, BLOCK_Q, BLOCK_K))
    base = mask_grids(spec, GRID, GRID) if spec.mask is not None else None
    best, best_cost = None, math.inf
    for bq, bk in BLOCK_CANDIDATES:
        n_r, n_c = math.ceil(spec.Sq / bq), math.ceil(max(1, spec.Sk) / bk)
        grids = pool_grids(base, bq // GRID, bk // GRID, n_r, n_c) if base is not None else None
        tm = tile_map(spec, bq, bk, grids)
        steps = len(head_chunks(spec.B, spec.Hkv, pairs_per_chunk(spec, bq, bk, 1, torch.float32)))
        cost = sum(len(r) for r in tm.row_tiles) * (TILE_OVERHEAD * steps + spec.B * spec.H * bq * bk)
        if cost < best_cost:
            best, best_cost = tm, cost
    return best
