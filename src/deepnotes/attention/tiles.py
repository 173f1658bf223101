"""The tiles of one blockwise-attention call: their sizes, slicing, masking and buffers.

plan_tiles picks the tile sizes and derives the tile map (masks.py) once per
call. Tiles then serves the kernels in blockwise.py: it packs GQA query heads
into tile rows, (B, Hkv, G, S, D) -> (B*Hkv, G*br, D), computes a tile's scores
(scale and log2 e already folded into Q, softcap, additive mask, -inf where the
band or a bool mask hides an element) into a per-thread buffer, and draws the
tile's dropout keep-mask. Scores are in log2 units, S2 = log2(e) * s, because
torch's exp2 costs half of its exp on this CPU (measured, AVX2), so additive
masks and the softcap are rescaled by log2 e here.
"""
from __future__ import annotations

import math
import threading

import torch

from .dropout import keep_tile
from .inputs import AttentionSpec
from .masks import PARTIAL, TileMap, mask_grids, pool_grids, structure_visible, tile_map

__all__ = ["Tiles", "plan_tiles", "LOG2E", "LN2", "BLOCK_Q", "BLOCK_K", "BLOCK_CANDIDATES", "GRID",
           "TILE_OVERHEAD"]

LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)
BLOCK_Q = 256  # query rows per tile (per head; x G under GQA)
BLOCK_K = 512  # keys per tile
# Tile sizes tried for masked / banded inputs (multiples of GRID, where the mask is reduced once).
BLOCK_CANDIDATES = ((256, 512), (128, 256), (64, 128), (64, 64))
GRID = 64
# Fixed cost of one tile step in units of score elements x heads: ~0.34 ms vs ~2.3 ns per element
# on the 2-core AVX2 machine this was measured on (benchmarks/attention.py, sparse masks).
TILE_OVERHEAD = 150_000


class Tiles:
    """Slicing of one call's tensors into packed tiles; owns the per-tile masking and buffers."""

    def __init__(self, spec: AttentionSpec, tmap: TileMap, bias: torch.Tensor | None, seed: int | None,
                 dtype: torch.dtype, device):
        self.spec, self.tmap, self.seed, self.dtype = spec, tmap, seed, dtype
        self.bias = None if bias is None else bias.to(dtype) * LOG2E  # scores are kept in log2 units
        self.cap2 = spec.softcap * LOG2E  # softcap in log2 units: log2e*c*tanh(u/c) = c2*tanh(log2e*u/c2)
        self.bh = torch.arange(spec.B * spec.H, device=device, dtype=torch.int64)  # dropout counters
        self.device = device
        self._band: dict[tuple[int, int, int], torch.Tensor | None] = {}
        self._local = threading.local()  # score buffers, one set per worker thread

    def rows(self, i):
        return self.tmap.rows(i, self.spec.Sq)

    def cols(self, j):
        return self.tmap.cols(j, self.spec.Sk)

    def pack(self, x5: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """(B, Hkv, G, S, X) -> rows r0:r1 as (B*Hkv, G*br, X)."""
        B, Hkv, G, _, X = x5.shape
        return x5[:, :, :, r0:r1].reshape(B * Hkv, G * (r1 - r0), X)

    def release(self) -> None:
        """Drops the score buffers (the object itself lives on in autograd's ctx until backward)."""
        self._local = threading.local()

    def buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A reused contiguous (shape) buffer of this thread: tiles are written into warm memory."""
        n = math.prod(shape)
        buf = getattr(self._local, name, None)
        if buf is None or buf.numel() < n:
            s = self.spec
            cap = s.B * s.Hkv * s.G * self.tmap.block_q * self.tmap.block_k
            buf = torch.empty(max(n, cap), dtype=self.dtype, device=self.device)
            setattr(self._local, name, buf)
        return buf[:n].view(shape)

    def _broadcast_tile(self, m: torch.Tensor, r0, r1, c0, c1) -> torch.Tensor:
        """A (Bm, Hm, Sqm, Skm) mask's tile, shaped to broadcast against (B, Hkv, G, br, bc)."""
        s = self.spec
        m = m[:, :, r0:r1] if m.shape[2] > 1 else m
        m = m[:, :, :, c0:c1] if m.shape[3] > 1 else m
        Bm, Hm = m.shape[:2]
        return m.reshape(Bm, s.Hkv, s.G, *m.shape[2:]) if Hm > 1 else m.unsqueeze(1)

    def _band_bias(self, r0, r1, c0, c1) -> torch.Tensor | None:
        """0 / -inf (br, bc) for the causal/window band; it depends only on c0 - r0 and the sizes."""
        key = (r1 - r0, c1 - c0, c0 - r0)
        if key not in self._band:
            rows = torch.arange(r0, r1, device=self.device)
            cols = torch.arange(c0, c1, device=self.device)
            vis = structure_visible(rows, cols, self.spec)
            self._band[key] = None if vis is None else _hidden_to_bias(vis, self.dtype)
        return self._band[key]

    def scores(self, qi, kj, i, j, keep_tanh=False):
        """S for query tile i, key tile j: (B*Hkv, G*br, bc), plus tanh(S/softcap) if asked (backward)."""
        s, (r0, r1), (c0, c1) = self.spec, self.rows(i), self.cols(j)
        S = torch.bmm(qi, kj.transpose(1, 2), out=self.buffer("S", (qi.shape[0], qi.shape[1], c1 - c0)))
        t = None
        if s.softcap > 0:
            if keep_tanh:
                t = torch.tanh(S.div_(self.cap2))
                S = torch.mul(t, self.cap2)
            else:
                S.div_(self.cap2).tanh_().mul_(self.cap2)
        S5 = S.view(s.B, s.Hkv, s.G, r1 - r0, c1 - c0)
        if self.bias is not None:
            S5.add_(self._broadcast_tile(self.bias, r0, r1, c0, c1))
        if self.tmap.cls[i][j] == PARTIAL:
            # Hidden scores become -inf by adding a 0/-inf bias: a broadcast add is vectorised along
            # the keys, where a broadcast masked_fill_ is ~25x slower on this CPU (measured).
            hidden = self._band_bias(r0, r1, c0, c1)
            if s.bool_mask:
                mb = _hidden_to_bias(self._broadcast_tile(s.mask, r0, r1, c0, c1), self.dtype)
                hidden = mb if hidden is None else mb + hidden
            if hidden is not None:
                S5.add_(hidden)
        return S, t

    def keep(self, i, j, dtype) -> torch.Tensor:
        """Z / (1 - p) for tile (i, j), packed as (B*Hkv, G*br, bc)."""
        s, (r0, r1), (c0, c1) = self.spec, self.rows(i), self.cols(j)
        rows = torch.arange(r0, r1, device=self.device)
        cols = torch.arange(c0, c1, device=self.device)
        z = keep_tile(self.seed, s.dropout_p, self.bh, rows, cols, s.Sq, s.Sk)  # (B*H, br, bc)
        return z.view(s.B * s.Hkv, s.G * (r1 - r0), c1 - c0).to(dtype).mul_(1.0 / (1.0 - s.dropout_p))


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


def plan_tiles(spec: AttentionSpec, block_q: int | None = None, block_k: int | None = None) -> TileMap:
    """The tile map of one call. Given sizes are used as they are (widened for decode); otherwise
    dense inputs take BLOCK_Q x BLOCK_K and masked/banded ones the candidate size that minimises

        (visible tiles) x (TILE_OVERHEAD + B*H*block_q*block_k)

    so a fine-grained sparse mask gets tiles small enough to skip its empty blocks, while a dense
    one keeps tiles large enough that the per-tile cost of ~15 torch calls stays small."""
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
        cost = sum(len(r) for r in tm.row_tiles) * (TILE_OVERHEAD + spec.B * spec.H * bq * bk)
        if cost < best_cost:
            best, best_cost = tm, cost
    return best
