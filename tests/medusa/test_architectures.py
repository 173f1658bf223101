"""medusa_generate across transformers causal LM architectures: greedy equivalence with ``generate`` for the
ones the masked tree forward verifies exactly (rotary, learned and OPT-offset positions, sliding-window and
hybrid full/sliding caches, soft-capped and scaled logits, tied and untied heads, eager and sdpa), and a clear
ValueError up front for the ones it cannot (ALiBi, recurrent or linear-attention state, chunked attention,
GPT-Neo local attention, no KV cache, logits that are not the lm_head's)."""
import pytest
import torch
import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from deepnotes.medusa import MedusaModel, chain, medusa_generate
from deepnotes.medusa.heads import backbone_forward

V = 96
BASE = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, head_dim=8, max_position_embeddings=256, bos_token_id=None, eos_token_id=None,
            pad_token_id=None, initializer_range=0.2)
UNTIED = dict(tie_word_embeddings=False)
LOUD = dict(initializer_range=1.0, tie_word_embeddings=False)  # tiny tied Gemma-likes otherwise repeat one token
SW = dict(sliding_window=6)  # shorter than prompt + output, so the window binds
MOE = dict(num_local_experts=4, num_experts_per_tok=2)
MLA = dict(kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, head_dim=None,
           num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
           moe_intermediate_size=16, first_k_dense_replace=1)

# name: (model_type, config overrides, attention implementations)
BOTH = ("eager", "sdpa")
SUPPORTED = {
    "llama": ("llama", {}, BOTH),
    "llama-tied": ("llama", dict(tie_word_embeddings=True, initializer_range=1.0), ("sdpa",)),
    "mistral-sliding": ("mistral", SW, BOTH),
    "qwen2": ("qwen2", {}, BOTH),
    "qwen2-hybrid-sliding": ("qwen2", dict(use_sliding_window=True, max_window_layers=1, **SW), BOTH),
    "qwen3": ("qwen3", LOUD, BOTH),
    "gemma": ("gemma", UNTIED, BOTH),
    "gemma2-softcap-sliding": ("gemma2", dict(**LOUD, **SW), ("eager",)),
    "gemma3-hybrid-sliding": ("gemma3_text", dict(layer_types=["sliding_attention", "full_attention"], **LOUD, **SW),
                              BOTH),
    "phi": ("phi", {}, BOTH),
    "phi3-sliding": ("phi3", SW, BOTH),
    "gpt2": ("gpt2", {}, BOTH),
    "gpt_neox": ("gpt_neox", {}, BOTH),
    "gptj": ("gptj", dict(rotary_dim=4), BOTH),
    "opt": ("opt", {}, BOTH),
    "falcon": ("falcon", dict(UNTIED, head_dim=None), BOTH),
    "stablelm": ("stablelm", {}, BOTH),
    "olmo2": ("olmo2", {}, BOTH),
    "cohere-scaled": ("cohere", UNTIED, BOTH),
    "cohere2-hybrid-sliding": ("cohere2", dict(UNTIED, **SW), BOTH),
    "starcoder2-sliding": ("starcoder2", dict(UNTIED, **SW), BOTH),
    "gpt_bigcode": ("gpt_bigcode", LOUD, BOTH),
    "codegen": ("codegen", dict(rotary_dim=4), BOTH),
    "granite-scaled": ("granite", dict(logits_scaling=4.0), BOTH),
    "minicpm3-scaled-mla": ("minicpm3", dict(MLA, **UNTIED), ("sdpa",)),
    "hyperclovax-scaled": ("hyperclovax", dict(logits_scaling=4.0, **LOUD), ("sdpa",)),
    "deepseek_v3-mla-moe": ("deepseek_v3", MLA, BOTH),
    "olmo": ("olmo", {}, ("sdpa",)),
    "gpt_neo-global": ("gpt_neo", dict(attention_types=[[["global"], 2]]), ("eager",)),
    "gpt_oss-sinks-hybrid-sliding": ("gpt_oss", dict(MOE, **SW), ("eager",)),
    "dory-looped": ("dory", dict(num_hidden_layers=3, n_input_layers=1, n_recurrent_layers=1, n_output_layers=1),
                    ("sdpa",)),
    "smollm3": ("smollm3", {}, BOTH),
}
TREES = {"chain": chain(3), "branch": [(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)], "mc_sim_7b_63": None}


def tiny(model_type, attn="sdpa", seed=0, **overrides):
    cfg_kwargs = {k: v for k, v in {**BASE, **overrides}.items() if v is not None or k.endswith("token_id")}
    cfg = CONFIG_MAPPING[model_type](**cfg_kwargs)
    torch.manual_seed(seed)
    cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
    return cls._from_config(cfg, attn_implementation=attn).float().eval()


def greedy(base, ids, max_new_tokens, eos_token_id=None):
    out = base.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                        eos_token_id=eos_token_id, pad_token_id=0)
    return out[0, ids.shape[1]:]


@torch.no_grad()
def fitted_heads(model, sequences, noise=0.3, seed=0):
    """Trained-like heads: least-squares fits of token t+k+2 on h_t over ``sequences``, with weight noise cut
    until each head is right on at least 60% of them, so candidates are often (not always) accepted."""
    g = torch.Generator().manual_seed(seed)
    hidden = [backbone_forward(model, s[None])[0][0] for s in sequences]
    for k, head in enumerate(model.heads):
        for block in head.blocks:
            block.linear.weight.copy_(0.01 * torch.randn(block.linear.weight.shape, generator=g))
        x = torch.cat([head.blocks(h[: len(s) - k - 2]) for s, h in zip(sequences, hidden)])
        y = torch.cat([s[k + 2:] for s in sequences])
        bias = head.proj.bias is not None
        xb = torch.cat([x, torch.ones(len(x), 1)], 1) if bias else x
        w = torch.linalg.lstsq(xb, torch.nn.functional.one_hot(y, V).float(), driver="gelsd").solution
        if bias:
            head.proj.bias.copy_(w[-1])
        fit, e = w[: x.shape[1]].T, torch.randn(head.proj.weight.shape, generator=g)
        for scale in (noise, noise / 2, noise / 4, noise / 8, noise / 16, 0.0):
            head.proj.weight.copy_(fit + scale * fit.std() * e)
            if (head.proj(x).argmax(-1) == y).float().mean() >= 0.6:
                break
    return model


def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, V, (1, n), generator=g) for n in (5, 9)]


@pytest.mark.parametrize("name, attn", [(name, attn) for name, (_, _, attns) in SUPPORTED.items() for attn in attns])
def test_equals_greedy(name, attn, one_thread):
    model_type, overrides, _ = SUPPORTED[name]
    base = tiny(model_type, attn, **overrides)
    ids, n_new = prompts(), 20
    refs = [greedy(base, p, n_new) for p in ids]
    assert min(len(set(r.tolist())) for r in refs) >= 6  # a varied continuation, not one repeated token
    model = fitted_heads(MedusaModel(base, num_heads=3).eval(), [torch.cat([p[0], r]) for p, r in zip(ids, refs)])
    most = 0
    for tree in TREES.values():
        for p, ref in zip(ids, refs):
            result = medusa_generate(model, p, n_new, choices=tree, eos_token_id=[])
            assert torch.equal(result.tokens, ref)
            most = max(most, max(result.accepted))
    assert most >= 3  # candidates were really accepted
    # eos inside the continuation stops both at the same token
    eos = refs[1][8].item()
    stopped = greedy(base, ids[1], n_new, eos_token_id=eos)
    assert torch.equal(medusa_generate(model, ids[1], n_new, eos_token_id=eos).tokens, stopped)


# name: (model_type, config overrides, attention implementation, what the error names)
UNSUPPORTED = {
    "bloom-alibi": ("bloom", UNTIED, "eager", "takes no position_ids"),
    "mpt-alibi": ("mpt", {}, "eager", "takes no position_ids"),
    "falcon-alibi": ("falcon", dict(alibi=True, head_dim=None), "sdpa", "ALiBi"),
    "mamba-recurrent": ("mamba", {}, "eager", "takes no position_ids"),
    "lfm2-conv": ("lfm2", dict(layer_types=["conv", "full_attention"]), "sdpa", "layer types"),
    "llama4-chunked": ("llama4_text", dict(layer_types=["chunked_attention", "full_attention"], attention_chunk_size=4),
                       "sdpa", "layer types"),
    "gpt_neo-local": ("gpt_neo", dict(attention_types=[[["global", "local"], 1]], window_size=6), "eager",
                      "local attention"),
    "openai-gpt-no-cache": ("openai-gpt", {}, "eager", "keeps no KV cache"),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_raise_up_front(name, one_thread):
    model_type, overrides, attn, why = UNSUPPORTED[name]
    model = MedusaModel(tiny(model_type, attn, **overrides), num_heads=3).eval()
    with pytest.raises(ValueError, match=rf"^model: .*{why}"):
        medusa_generate(model, prompts()[0], 8)


class BiasedLogitsLlama(transformers.LlamaForCausalLM):
    """A base whose forward adds a final logits bias after the lm_head (as BART does)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits + torch.linspace(0, 1, V)
        return out


def test_logits_other_than_the_lm_head_output_raise(one_thread):
    base = tiny("llama")
    model = MedusaModel(BiasedLogitsLlama._from_config(base.config).eval(), num_heads=3).eval()
    with pytest.raises(ValueError, match=r"^model: BiasedLogitsLlama computes its logits"):
        medusa_generate(model, prompts()[0], 8)
