"""Exact attention: a readable reference, a blockwise CPU kernel, a Triton GPU kernel.

    flash_attention(q, k, v, *, causal, mask, scale, window, softcap, dropout_p, generator, return_lse)
    attention_reference(same arguments)

Layout (B, H, S, D) as torch SDPA. The Triton module and the transformers
integration (hf.py) are imported only when used.
"""
from __future__ import annotations

from .api import ScaledDotProductAttention, flash_attention, uses_triton
from .blockwise import BLOCK_K, BLOCK_Q, blockwise_attention
from .inputs import AttentionSpec, check_inputs
from .masks import EMPTY, FULL, PARTIAL, TileMap, dense_visible, structure_visible, tile_map
from .reference import attention_reference

__all__ = [
    "flash_attention",
    "attention_reference",
    "blockwise_attention",
    "ScaledDotProductAttention",
    "uses_triton",
    "BLOCK_Q",
    "BLOCK_K",
    "AttentionSpec",
    "check_inputs",
    "TileMap",
    "tile_map",
    "structure_visible",
    "dense_visible",
    "EMPTY",
    "PARTIAL",
    "FULL",
]
