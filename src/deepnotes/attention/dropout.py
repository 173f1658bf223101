"""Attention dropout that any tiling reproduces exactly.

Dropout multiplies the normalised probabilities by Z / (1 - p), Z ~ Bernoulli(1 - p),
after the softmax (the normaliser l and the LSE are those of the undropped P):

    O = (P o Z) V / (1 - p)

A tiled kernel meets each element (b, h, i, j) once in the forward and again
in the backward, in tiles of whatever size. So Z must be a pure function of
the element's coordinates and one seed, not of a stream position: a
counter-based generator. Here the counter is the linear index
((b*H + h)*Sq + i)*Sk + j, mixed with the seed by SplitMix64's finaliser
(Steele, Lea & Flood 2014), whose top 24 bits give u ~ U[0, 1); keep iff u >= p.
The seed is drawn once per call from the user's generator, so the same
generator state gives the same Z bitwise on every path (reference, blockwise,
any block size).
"""
from __future__ import annotations

import torch

__all__ = ["draw_seed", "keep_mask", "keep_tile"]

_M64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 with the same bits."""
    c &= _M64
    return c - (1 << 64) if c >= (1 << 63) else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_C1 = _signed(0xBF58476D1CE4E5B9)
_C2 = _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def draw_seed(generator: torch.Generator | None, device="cpu") -> int:
    """One 62-bit seed from the generator (torch's default generator when None, as F.dropout)."""
    dev = generator.device if generator is not None else device
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=dev, dtype=torch.int64).item())


def _uniform24(index: torch.Tensor, seed: int) -> torch.Tensor:
    """SplitMix64 finaliser of (seed + index * golden) -> int64 in [0, 2^24)."""
    z = index * _GOLDEN + _signed(seed)  # int64 arithmetic wraps modulo 2^64
    z = (z ^ _shr(z, 30)) * _C1
    z = (z ^ _shr(z, 27)) * _C2
    z = z ^ _shr(z, 31)
    return _shr(z, 40)


def keep_tile(seed: int, p: float, bh: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
              Sq: int, Sk: int) -> torch.Tensor:
    """Z for query heads `bh` (n,) = b*H + h, query rows (r,), key cols (c,) -> bool (n, r, c)."""
    index = (bh.view(-1, 1, 1) * Sq + rows.view(1, -1, 1)) * Sk + cols.view(1, 1, -1)  # (n, r, c) int64
    threshold = int(round(p * (1 << 24)))
    return _uniform24(index, seed) >= threshold


def keep_mask(seed: int, p: float, B: int, H: int, Sq: int, Sk: int, device="cpu") -> torch.Tensor:
    """Z over the whole (B, H, Sq, Sk) grid (the reference path)."""
    bh = torch.arange(B * H, device=device, dtype=torch.int64)
    rows = torch.arange(Sq, device=device, dtype=torch.int64)
    cols = torch.arange(Sk, device=device, dtype=torch.int64)
    return keep_tile(seed, p, bh, rows, cols, Sq, Sk).view(B, H, Sq, Sk)
