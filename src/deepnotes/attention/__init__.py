"""Exact attention: a readable reference, a blockwise CPU kernel, a Triton GPU kernel.

    flash_attention(q, k, v, *, causal, mask, scale, window, softcap, dropout_p, generator, return_lse,
                    alibi_slopes)
    attention_reference(same arguments)
    flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, causal, scale,
                           window, softcap, alibi_slopes, dropout_p, generator, return_lse)
    attention_reference_varlen(same arguments)

Layout (B, H, S, D) as torch SDPA; the varlen pair takes packed (total_tokens, H, D)
tensors as flash-attn's flash_attn_varlen_func. The Triton module and the
transformers integration (hf.py) are imported only when used.
"""
from __future__ import annotations

from .alibi import geometric_slopes
from .api import ScaledDotProductAttention, flash_attention, uses_triton
from .blockwise import BLOCK_K, BLOCK_Q, blockwise_attention
from .inputs import AttentionSpec, VarlenSpec, check_inputs, check_varlen
from .masks import EMPTY, FULL, PARTIAL, TileMap, dense_visible, structure_visible, tile_map
from .reference import attention_reference, attention_reference_varlen
from .varlen import blockwise_attention_varlen, flash_attention_varlen

__all__ = [
    "flash_attention",
    "attention_reference",
    "flash_attention_varlen",
    "attention_reference_varlen",
    "blockwise_attention",
    "blockwise_attention_varlen",
    "geometric_slopes",
    "ScaledDotProductAttention",
    "uses_triton",
    "BLOCK_Q",
    "BLOCK_K",
    "AttentionSpec",
    "VarlenSpec",
    "check_inputs",
    "check_varlen",
    "TileMap",
    "tile_map",
    "structure_visible",
    "dense_visible",
    "EMPTY",
    "PARTIAL",
    "FULL",
]
