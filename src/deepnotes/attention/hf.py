"""flash_attention as a transformers attention implementation named "deepnotes".

    from deepnotes.attention.hf import register
    register()                                   # once per process
    model = LlamaForCausalLM(config)             # config._attn_implementation = "deepnotes", or
    model.set_attn_implementation("deepnotes")

transformers (5.x) looks an implementation up in two registries: AttentionInterface
(the attention function) and AttentionMaskInterface (how the model's mask is
built). We register our function in the first and torch SDPA's mask builder in
the second, so that models hand us what SDPA gets: a bool (B, 1, Sq, Sk) mask
(True = attend) with padding, sliding windows and caches folded in, or None
when plain causal attention is enough. Query/key/value arrive as (B, H, S, D)
with k, v on their own (fewer, GQA) heads, which flash_attention takes as they
are (no repeat_kv); the output goes back as (B, S, H, D).

Importing this module imports transformers; `deepnotes.attention` itself does not.
"""
from __future__ import annotations

import torch

from .api import flash_attention

__all__ = ["NAME", "register", "deepnotes_attention_forward"]

NAME = "deepnotes"


def deepnotes_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                value: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float = 0.0,
                                scaling: float | None = None, is_causal: bool | None = None,
                                softcap: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature. query (B, H, Sq, D), key/value (B, Hkv, Sk, D)
    -> ((B, Sq, H, D), None); attention weights are never materialised, so none are returned."""
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    mask = attention_mask
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, :, : key.shape[-2]]  # static caches may hand over a longer mask
    # With no mask the model wants plain causal attention; ours is bottom-right aligned, which is
    # what a query block at the end of a cache needs.
    causal = bool(is_causal) and mask is None
    out = flash_attention(query, key, value, causal=causal, mask=mask, scale=scaling,
                          softcap=float(softcap) if softcap else 0.0,
                          dropout_p=float(dropout) if module.training else 0.0)
    return out.transpose(1, 2).contiguous(), None  # (B, H, Sq, D) -> (B, Sq, H, D)


def register(name: str = NAME) -> str:
    """Registers flash_attention with transformers under `name` (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, deepnotes_attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
