"""Which keys a query sees, element by element and tile by tile.

Visibility is the AND of two parts:

* structure (causal / sliding window), aligned bottom-right as flash-attn:
      visible(i, j)  <=>  -left <= j - (i + Sk - Sq) <= right     (-1 = unbounded side)
  It is a band, so a tile's class follows from its corners without looking at
  any element.
* the user's mask: bool (True = attend) or additive float (-inf = hidden),
  broadcastable to (B, H, Sq, Sk).

The blockwise kernels split the (Sq, Sk) plane into tiles of block_q x block_k
and derive a tile map once per call:

    EMPTY   every element hidden for every (b, h): the tile is never computed
    PARTIAL some elements hidden: computed, then hidden scores set to -inf
    FULL    nothing hidden: computed with no masking work at all

so a sparse mask (causal, a Medusa tree, a block-sparse layout) costs only its
visible tiles. A tile is skipped only when it is empty for all batches and
heads, since one tile step covers all of them at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .inputs import AttentionSpec

__all__ = ["EMPTY", "PARTIAL", "FULL", "structure_visible", "dense_visible", "TileMap", "tile_map", "mask_grids",
           "pool_grids"]

EMPTY, PARTIAL, FULL = 0, 1, 2


def structure_visible(rows: torch.Tensor, cols: torch.Tensor, spec: AttentionSpec) -> torch.Tensor | None:
    """Causal/window visibility of query positions `rows` (r,) and key positions `cols` (c,) -> bool (r, c).

    None when there is no structure (everything visible)."""
    if not spec.has_structure:
        return None
    rel = cols[None, :] - (rows[:, None] + spec.offset)  # (r, c): j - (i + Sk - Sq)
    vis = torch.ones(rel.shape, dtype=torch.bool, device=rel.device)
    if spec.left >= 0:
        vis &= rel >= -spec.left
    if spec.right >= 0:
        vis &= rel <= spec.right
    return vis


def dense_visible(spec: AttentionSpec, device) -> torch.Tensor | None:
    """Full visibility, bool broadcastable to (B, H, Sq, Sk), or None if all visible (the reference path)."""
    rows = torch.arange(spec.Sq, device=device)
    cols = torch.arange(spec.Sk, device=device)
    vis = structure_visible(rows, cols, spec)
    if spec.bool_mask:
        vis = spec.mask if vis is None else vis & spec.mask
    return vis


def _band_classes(spec: AttentionSpec, block_q: int, block_k: int, n_r: int, n_c: int) -> torch.Tensor:
    """Class of every tile under the causal/window band -> (n_r, n_c) uint8, from tile corners only."""
    r0 = torch.arange(n_r, dtype=torch.float64)[:, None] * block_q
    r1 = torch.clamp(r0 + block_q, max=spec.Sq)  # exclusive
    c0 = torch.arange(n_c, dtype=torch.float64)[None, :] * block_k
    c1 = torch.clamp(c0 + block_k, max=spec.Sk)
    off = spec.offset
    left = math.inf if spec.left < 0 else spec.left
    right = math.inf if spec.right < 0 else spec.right
    # Row x sees keys [x + off - left, x + off + right]; both ends grow with x, so corners decide.
    empty = (r1 - 1 + off + right < c0) | (r0 + off - left > c1 - 1)
    full = (r1 - 1 + off - left <= c0) & (r0 + off + right >= c1 - 1)
    cls = torch.full((n_r, n_c), PARTIAL, dtype=torch.uint8)
    cls[full.expand(n_r, n_c)] = FULL
    cls[empty.expand(n_r, n_c)] = EMPTY
    return cls


_ONES8 = int.from_bytes(b"\x01" * 8, "little")  # eight 0/1 bytes that are all 1, read as one int64


def _tile_reduce(x: torch.Tensor, bq: int, bk: int, n_r: int, n_c: int, how: str) -> torch.Tensor:
    """any ("any") / all ("all") of a 0/1 uint8 (R, C) map over tiles -> (n_r, n_c) uint8; R, C are 1 or full."""
    R, C = x.shape
    tq, tk = (bq if R > 1 else 1), (bk if C > 1 else 1)
    pr, pc = (n_r * tq - R) if R > 1 else 0, (n_c * tk - C) if C > 1 else 0
    if pr or pc:  # padding must not change the reduction
        x = torch.nn.functional.pad(x, (0, pc, 0, pr), value=0 if how == "any" else 1)
    # Eight 0/1 bytes read as one int64 are > 0 iff any is 1 and equal _ONES8 iff all are: the
    # reduction then touches 8x fewer elements (the mask pass was most of planning time).
    packed = tk % 8 == 0
    if packed:
        x = x.contiguous().view(torch.int64)
        tk //= 8
    t = x.reshape(x.shape[0] // tq, tq, x.shape[1] // tk, tk)  # (n_r|1, tq, n_c|1, tk)
    if how == "any":
        t = t.amax(dim=(1, 3)) > 0
    else:
        t = t.amin(dim=(1, 3)) == (_ONES8 if packed else 1)
    return t.to(torch.uint8).expand(n_r, n_c)


def mask_grids(spec: AttentionSpec, block_q: int, block_k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(any_visible, all_visible) uint8 (n_r, n_c) grids of the user's mask over all (b, h); None if no mask.

    For an additive mask "visible" means > -inf, and all_visible is returned as zeros (the mask is
    added to every computed tile, so no tile of it is ever mask-free)."""
    m = spec.mask
    if m is None:
        return None
    n_r, n_c = max(1, math.ceil(spec.Sq / block_q)), max(1, math.ceil(spec.Sk / block_k))
    vis = m if spec.bool_mask else m > -math.inf
    v8 = vis.view(torch.uint8) if vis.dtype == torch.bool else vis.to(torch.uint8)
    if v8.shape[0] * v8.shape[1] > 1:
        seen, whole = v8.amax(dim=(0, 1)), v8.amin(dim=(0, 1))  # (Sqm, Skm): some / every (b, h)
    else:
        seen = whole = v8[0, 0]
    any_t = _tile_reduce(seen, block_q, block_k, n_r, n_c, "any")
    all_t = _tile_reduce(whole, block_q, block_k, n_r, n_c, "all") if spec.bool_mask else torch.zeros_like(any_t)
    return any_t, all_t


def pool_grids(grids: tuple[torch.Tensor, torch.Tensor], fq: int, fk: int, n_r: int, n_c: int):
    """Coarsens (any, all) grids by integer factors (fq, fk) to (n_r, n_c) tiles."""
    any_t, all_t = grids
    return (_tile_reduce(any_t.contiguous(), fq, fk, n_r, n_c, "any"),
            _tile_reduce(all_t.contiguous(), fq, fk, n_r, n_c, "all"))


@dataclass
class TileMap:
    """Tile classes of one call: cls[i][j] for query tile i and key tile j."""

    block_q: int
    block_k: int
    n_r: int
    n_c: int
    cls: list[list[int]]
    row_tiles: list[list[int]] = field(default_factory=list)  # key tiles computed for each query tile
    col_tiles: list[list[int]] = field(default_factory=list)  # query tiles computed for each key tile

    def __post_init__(self) -> None:
        self.row_tiles = [[j for j in range(self.n_c) if self.cls[i][j] != EMPTY] for i in range(self.n_r)]
        self.col_tiles = [[i for i in range(self.n_r) if self.cls[i][j] != EMPTY] for j in range(self.n_c)]

    def cls_tensor(self) -> torch.Tensor:
        """cls as a contiguous uint8 (n_r, n_c) tensor (made once per map: plans are cached per mask)."""
        t = getattr(self, "_cls_tensor", None)
        if t is None:
            t = self._cls_tensor = torch.tensor(self.cls, dtype=torch.uint8).reshape(self.n_r, self.n_c)
        return t

    @property
    def visible_fraction(self) -> float:
        return sum(len(r) for r in self.row_tiles) / max(1, self.n_r * self.n_c)

    def rows(self, i: int, Sq: int) -> tuple[int, int]:
        return i * self.block_q, min(Sq, (i + 1) * self.block_q)

    def cols(self, j: int, Sk: int) -> tuple[int, int]:
        return j * self.block_k, min(Sk, (j + 1) * self.block_k)


def tile_map(spec: AttentionSpec, block_q: int, block_k: int, grids=None) -> TileMap:
    """Derives the tile classes once from the band and the mask (never materialising (Sq, Sk) for the band).

    `grids`: the mask's (any, all) grids at these block sizes, if already computed."""
    Sq, Sk = spec.Sq, spec.Sk
    n_r, n_c = max(1, math.ceil(Sq / block_q)), max(1, math.ceil(Sk / block_k))
    if Sq == 0 or Sk == 0:
        cls = torch.full((n_r, n_c), EMPTY, dtype=torch.uint8)
    elif spec.has_structure:
        cls = _band_classes(spec, block_q, block_k, n_r, n_c)
    else:
        cls = torch.full((n_r, n_c), FULL, dtype=torch.uint8)
    if spec.mask is not None and Sq > 0 and Sk > 0:
        any_t, all_t = grids if grids is not None else mask_grids(spec, block_q, block_k)
        mcls = torch.where(all_t > 0, FULL, torch.where(any_t > 0, PARTIAL, EMPTY)).to(torch.uint8)
        if spec.additive_mask:  # added to every tile anyway: only its all -inf tiles change the class
            mcls = torch.where(any_t > 0, FULL, EMPTY).to(torch.uint8)
        cls = torch.minimum(cls, mcls)
    return TileMap(block_q=block_q, block_k=block_k, n_r=n_r, n_c=n_c, cls=cls.tolist())
