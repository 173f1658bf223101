"""ALiBi (Press et al. 2022, "Train short, test long") as flash-attn takes it.

Attention with linear biases adds to every score a penalty linear in the
distance between the query and the key, with one slope per head (or per batch
and head), instead of adding position embeddings:

    bias(b, h, i, j) = -slope[b, h] * |i + Sk - Sq - j|                     (1)

i + Sk - Sq is the query's position aligned bottom-right, as causal masks
and windows are (inputs.py), so the key at the query's own position gets no
penalty. The bias is added after the softcap, as an additive mask is.

flash-attn defines (1) for non-causal calls and, for causal ones, the bias
slope * (j - Sk + 1) (`attn_bias_from_alibi_slopes` in its tests) or
slope * j (its kernels): on the keys a causal query sees, j <= i + Sk - Sq,
both differ from (1) by a constant per row, and softmax is shift invariant,
so O and every gradient are the same. Only the log-sum-exp moves by that
constant; we return the LSE of (1) in every mode. (1) is also the better
choice in floating point: its values near the diagonal, where the weight is,
are small, while slope * (j - Sk + 1) is large for every key of an early row.

The blockwise kernel never builds the (Sq, Sk) bias: a tile's distances
|i + Sk - Sq - j| depend only on the tile's size and its offset from the
diagonal, so they are made once per offset (`distance`, cached by tiles.py)
and each tile adds -slope * distance with one broadcast op: O(block) memory.
The slopes are constants, as in flash-attn (no gradient flows to them).

`geometric_slopes(H)` gives the paper's geometric slopes, 2^(-8 h / H) for
h = 1..H (H a power of two; otherwise the paper's interleaving).
"""
from __future__ import annotations

import math

import torch

__all__ = ["geometric_slopes", "distance", "alibi_bias"]


def geometric_slopes(H: int, dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
    """The paper's per-head slopes -> (H,): 2^(-8/H), 2^(-16/H), ... (interleaved when H is not 2^n)."""
    if not isinstance(H, int) or H < 1:
        raise ValueError(f"H must be a positive int, got {H!r}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    n = 2 ** int(math.floor(math.log2(H)))
    slopes = power_of_two(n)
    if n < H:  # the reference implementation's rule: every other slope of the next power of two
        slopes += power_of_two(2 * n)[0::2][: H - n]
    return torch.tensor(slopes, dtype=dtype, device=device)


def distance(rows: torch.Tensor, cols: torch.Tensor, offset: int, dtype: torch.dtype) -> torch.Tensor:
    """|i + offset - j| for query positions rows (r,) and key positions cols (c,) -> (r, c) in dtype.

    Integers below 2^24 are exact in float32, so this tile is exact."""
    return (rows[:, None] + offset - cols[None, :]).abs().to(dtype)


def alibi_bias(slopes: torch.Tensor, Sq: int, Sk: int, dtype: torch.dtype) -> torch.Tensor:
    """Equation (1) in full: slopes (Bs, H) -> bias (Bs, H, Sq, Sk) in dtype (the reference path).

    The product is taken in at least float32 and rounded once to dtype, so a low-precision
    reference adds the bias a float32 user would have materialised."""
    wide = torch.promote_types(dtype, torch.float32)
    d = distance(torch.arange(Sq, device=slopes.device), torch.arange(Sk, device=slopes.device), Sk - Sq, wide)
    return (-slopes.to(wide)[:, :, None, None] * d).to(dtype)
