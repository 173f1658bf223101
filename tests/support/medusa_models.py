"""Tiny transformers causal LMs for the Medusa tests (float32, CPU, seeded).

``successor_lm`` builds a base whose greedy continuation mostly follows a fixed permutation σ of
the vocabulary (token t is followed by σ(t)): the embedding of t is read out by the lm_head row of
σ(t). Attention and MLP keep random weights scaled by ``context`` so the next token also depends on
the context (and on the KV cache being right). ``oracle_heads`` then sets head k's projection so
that it predicts σ^{k+2}(t), plus noise, so tree candidates are accepted often but not always,
and sometimes through a path other than the first.
"""
from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from deepnotes.medusa import MedusaModel


def tiny_llama(seed: int = 0, attn: str = "sdpa", vocab: int = 64, hidden: int = 32, layers: int = 2,
               tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=tie)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=attn).float().eval()


def tiny_gpt2(seed: int = 0, attn: str = "sdpa", vocab: int = 64, hidden: int = 32, layers: int = 2,
              tie: bool = True) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=512,
                     bos_token_id=None, eos_token_id=None, tie_word_embeddings=tie)
    return GPT2LMHeadModel._from_config(cfg, attn_implementation=attn).float().eval()


@torch.no_grad()
def successor_lm(kind: str = "llama", seed: int = 0, attn: str = "sdpa", vocab: int = 48, hidden: int = 64,
                 context: float = 8.0):
    """(base, sigma): a tiny LM that mostly continues t with sigma[t]."""
    base = tiny_llama(seed, attn, vocab, hidden) if kind == "llama" else tiny_gpt2(seed, attn, vocab, hidden,
                                                                                     tie=False)
    g = torch.Generator().manual_seed(seed + 1)
    sigma = torch.randperm(vocab, generator=g)
    E = torch.randn(vocab, hidden, generator=g)
    E = E / E.norm(dim=1, keepdim=True) * hidden ** 0.5
    base.get_input_embeddings().weight.copy_(E)
    W = torch.empty_like(E)
    W[sigma] = E / hidden ** 0.5  # row sigma(t) reads out the direction of E[t]
    base.get_output_embeddings().weight.copy_(W)
    for name, p in base.named_parameters():  # let the context matter: louder attention/MLP outputs
        if name.endswith(("o_proj.weight", "down_proj.weight", "attn.c_proj.weight", "mlp.c_proj.weight")):
            p.mul_(context)
    return base, sigma


@torch.no_grad()
def oracle_heads(model: MedusaModel, sigma: torch.Tensor, noise: float = 0.5, seed: int = 0) -> MedusaModel:
    """Head k predicts sigma^{k+2}(t) from the hidden state of t, with Gaussian noise on its weights."""
    g = torch.Generator().manual_seed(seed)
    W = model.lm_head.weight  # (V, D), row sigma(t) ~ E[t]
    power = sigma
    for k, head in enumerate(model.heads):
        power = sigma[power] if k else sigma  # sigma^{k+1}
        # U[v] = W[sigma^{-(k+1)}(v)]: maximal where sigma^{-(k+1)}(v) = sigma(t), i.e. v = sigma^{k+2}(t)
        inv_power = torch.argsort(power)
        head.proj.weight.copy_(W[inv_power] + noise * W.std() * torch.randn(W.shape, generator=g))
        for block in head.blocks:
            block.linear.weight.copy_(0.01 * torch.randn(block.linear.weight.shape, generator=g))
            block.linear.bias.copy_(0.01 * torch.randn(block.linear.bias.shape, generator=g))
    return model
