"""transformers integration: a tiny random Llama with attn_implementation="deepnotes" equals "eager"."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import deepnotes.attention.hf as hf  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def calls(monkeypatch):
    """Records the shapes and mask kinds flash_attention receives through transformers."""
    seen = []
    real = hf.flash_attention

    def spy(q, k, v, **kw):
        m = kw.get("mask")
        seen.append((q.shape[2], k.shape[2], None if m is None else m.dtype, kw.get("causal")))
        return real(q, k, v, **kw)

    monkeypatch.setattr(hf, "flash_attention", spy)
    return seen


def _model(kv_heads: int, seed: int = 0) -> LlamaForCausalLM:
    hf.register()
    cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128)
    torch.manual_seed(seed)  # random init of a config-built model: no weights are downloaded
    return LlamaForCausalLM(cfg)


def _logits(model, impl, **inputs):
    model.set_attn_implementation(impl)
    return model(**inputs).logits


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_logits_equal_eager_with_padding(kv_heads, calls):
    model = _model(kv_heads).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 101, (3, 23), generator=g)
    attn = torch.ones(3, 23, dtype=torch.long)
    attn[1, :6] = 0  # left padding
    attn[2, 15:] = 0  # right padding
    with torch.no_grad():
        eager = _logits(model, "eager", input_ids=ids, attention_mask=attn)
        ours = _logits(model, hf.NAME, input_ids=ids, attention_mask=attn)
    real = attn.bool()
    assert calls and all(c[2] in (torch.bool, None) for c in calls)
    assert (ours[real] - eager[real]).abs().max() <= 1e-5
    assert torch.isfinite(ours).all()  # padded query rows too


def test_logits_equal_eager_without_mask(calls):
    model = _model(2).eval()
    ids = torch.randint(0, 101, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        eager = _logits(model, "eager", input_ids=ids)
        ours = _logits(model, hf.NAME, input_ids=ids)
    assert (ours - eager).abs().max() <= 1e-5
    assert any(c[3] is True or c[2] == torch.bool for c in calls)  # causal came through, as a flag or a mask


def test_greedy_generation_with_cache_matches_eager(calls):
    model = _model(2).eval()
    ids = torch.randint(0, 101, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.set_attn_implementation("eager")
        ref = model.generate(ids, max_new_tokens=12, do_sample=False, min_new_tokens=12)
        model.set_attn_implementation(hf.NAME)
        out = model.generate(ids, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert torch.equal(out, ref)
    assert any(sq == 1 and sk > 9 for sq, sk, _, _ in calls)  # decode steps against the cache ran through us


def test_training_gradients_equal_eager():
    model = _model(2).train()  # attention_dropout is 0 in the config
    ids = torch.randint(0, 101, (2, 19), generator=torch.Generator().manual_seed(4))
    grads = {}
    for impl in ("eager", hf.NAME):
        model.zero_grad()
        model.set_attn_implementation(impl)
        model(input_ids=ids, labels=ids).loss.backward()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[hf.NAME].keys() == grads["eager"].keys()
    for n, g_ in grads["eager"].items():
        assert (grads[hf.NAME][n] - g_).abs().max() <= 1e-5 * max(1.0, g_.abs().max().item()), n


def test_register_is_idempotent():
    from transformers import AttentionInterface

    assert hf.register() == hf.register() == "deepnotes"
    assert AttentionInterface()["deepnotes"] is hf.deepnotes_attention_forward
