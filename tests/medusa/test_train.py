"""Medusa-1 / Medusa-2 losses and training (deepnotes.medusa.train)."""
from types import SimpleNamespace

import pytest
import torch

from deepnotes.artifacts import ArtifactStore
from deepnotes.medusa.heads import MedusaModel
from deepnotes.medusa.train import (IGNORE_INDEX, MedusaTraining, distill_data, head_accuracy, head_weights,
                                    medusa_loss, token_blocks, train_medusa, trained_medusa)


def tiny_llama(vocab=32, hidden=32, seed=0, init=0.02, tied=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tied, initializer_range=init)
    return LlamaForCausalLM(cfg).eval()


def cycle_stream(n, vocab=32, seed=0):
    """A learnable sequence: a random cyclic permutation of the vocabulary, repeated (token t fixes t+1, t+2, ...)."""
    order = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))
    return order.repeat(n // vocab + 1)[:n]


def manual_ce(logits, labels, shift):
    """Mean of -log softmax(logits[b, t])[labels[b, t+shift]] over existing, non-ignored targets, by loops."""
    B, T, V = logits.shape
    terms = []
    for b in range(B):
        for t in range(T - shift):
            y = int(labels[b, t + shift])
            if y != IGNORE_INDEX:
                terms.append(-torch.log_softmax(logits[b, t].double(), -1)[y])
    return torch.stack(terms).mean()


def test_head_weights_are_powers_of_decay():
    assert head_weights(4).tolist() == pytest.approx([1.0, 0.8, 0.64, 0.512])
    assert head_weights(3, 0.5).tolist() == pytest.approx([1.0, 0.5, 0.25])
    with pytest.raises(ValueError, match="num_heads"):
        head_weights(0)


def test_head_k_targets_token_t_plus_k_plus_2():
    K, B, T, V = 3, 2, 12, 16
    ids = torch.randint(V, (B, T), generator=torch.Generator().manual_seed(0))
    heads = torch.full((K, B, T, V), -30.0)
    for k in range(K):
        for t in range(T - k - 2):
            heads[k, :, t][torch.arange(B), ids[:, t + k + 2]] = 30.0  # head k certain of token t+k+2
    base = torch.zeros(B, T, V)
    loss, metrics = medusa_loss(SimpleNamespace(logits=base, head_logits=heads), ids)
    assert loss.item() < 1e-6
    assert all(metrics[f"loss_head{k}"] < 1e-6 for k in range(K))
    shifted = torch.roll(heads, shifts=1, dims=3)  # head k now certain of token t+k+3: wrong
    wrong, _ = medusa_loss(SimpleNamespace(logits=base, head_logits=shifted), ids)
    assert wrong.item() > 10


def test_medusa1_and_medusa2_losses_equal_their_formulas():
    K, B, T, V = 4, 2, 10, 11
    g = torch.Generator().manual_seed(1)
    out = SimpleNamespace(logits=torch.randn(B, T, V, generator=g), head_logits=torch.randn(K, B, T, V, generator=g))
    ids = torch.randint(V, (B, T), generator=g)
    labels = ids.clone()
    labels[0, :4] = IGNORE_INDEX
    ce = [manual_ce(out.head_logits[k], labels, k + 2) for k in range(K)]
    ce_base = manual_ce(out.logits, labels, 1)
    m1, metrics = medusa_loss(out, ids, labels=labels)
    assert m1.item() == pytest.approx(sum(0.8 ** k * c.item() for k, c in enumerate(ce)), rel=1e-5)
    assert metrics["loss_base"] == pytest.approx(ce_base.item(), rel=1e-5)
    m2, _ = medusa_loss(out, ids, labels=labels, medusa2=True)
    expect = ce_base.item() + 0.2 * sum(0.8 ** k * c.item() for k, c in enumerate(ce))
    assert m2.item() == pytest.approx(expect, rel=1e-5)
    m2b, _ = medusa_loss(out, ids, labels=labels, medusa2=True, base_weight=0.5, coefficient=1.0, decay=0.5)
    assert m2b.item() == pytest.approx(0.5 * ce_base.item() + sum(0.5 ** k * c.item() for k, c in enumerate(ce)),
                                       rel=1e-5)


def test_medusa_loss_rejects_bad_shapes():
    out = SimpleNamespace(logits=torch.zeros(1, 4, 5), head_logits=torch.zeros(4, 1, 4, 5))
    with pytest.raises(ValueError, match="too short"):
        medusa_loss(out, torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids"):
        medusa_loss(out, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="head_logits"):
        medusa_loss(SimpleNamespace(logits=out.logits, head_logits=None), torch.zeros(1, 4, dtype=torch.long))


def test_recipe_validates_its_fields():
    with pytest.raises(ValueError, match="block_size"):
        MedusaTraining(num_heads=4, block_size=5)
    with pytest.raises(ValueError, match="steps"):
        MedusaTraining(steps=0)
    with pytest.raises(ValueError, match="warmup"):
        MedusaTraining(steps=10, warmup=11)
    with pytest.raises(ValueError, match="lr"):
        MedusaTraining(lr=0.0)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("medusa2", [False, True])
def test_base_gets_gradient_only_in_medusa2(medusa2):
    model = MedusaModel(tiny_llama(), num_heads=2)
    cfg = MedusaTraining(num_heads=2, steps=2, batch_size=2, block_size=16, warmup=0, medusa2=medusa2, lr=1e-2)
    base0, heads0 = _state(model.base), _state(model.heads)
    seen = {}
    real_loss = medusa_loss

    def spy(output, ids, **kw):
        loss, m = real_loss(output, ids, **kw)
        loss.backward(retain_graph=True)
        seen["base_grads"] = [p.grad for p in model.base.parameters()]
        for p in model.parameters():
            p.grad = None
        return loss, m

    import deepnotes.medusa.train as train_module
    train_module.medusa_loss, original = spy, train_module.medusa_loss
    try:
        train_medusa(model, cycle_stream(200), cfg)
    finally:
        train_module.medusa_loss = original
    changed_base = any(not torch.equal(base0[k], v) for k, v in model.base.state_dict().items())
    changed_heads = any(not torch.equal(heads0[k], v) for k, v in model.heads.state_dict().items())
    assert changed_heads
    assert changed_base == medusa2
    assert all(g is None for g in seen["base_grads"]) == (not medusa2)
    assert all(p.requires_grad for p in model.base.parameters())  # the caller's flags are restored


def test_medusa2_uses_a_head_lr_multiplier(monkeypatch):
    import deepnotes.medusa.train as train_module

    groups = {}

    class Spy(train_module.AdamW):
        def __init__(self, params, **kw):
            super().__init__(params, **kw)
            groups["lrs"] = [g["lr"] for g in self.param_groups]

    monkeypatch.setattr(train_module, "AdamW", Spy)
    model = MedusaModel(tiny_llama(), num_heads=2)
    cfg = MedusaTraining(num_heads=2, steps=1, batch_size=2, block_size=16, warmup=0, medusa2=True, lr=1e-3,
                         head_lr_multiplier=4.0)
    train_medusa(model, cycle_stream(100), cfg)
    assert groups["lrs"] == pytest.approx([1e-3, 4e-3])


@pytest.mark.parametrize("shared", [False, True])
def test_training_raises_head_accuracy_on_a_learnable_sequence(shared):
    model = MedusaModel(tiny_llama(), num_heads=3, shared_projection=shared)
    lm_head = model.lm_head.weight.detach().clone()
    stream = cycle_stream(4000)
    val = token_blocks(cycle_stream(800, seed=0)[5:], 32)
    before = head_accuracy(model, val)
    cfg = MedusaTraining(num_heads=3, steps=80, batch_size=8, block_size=32, lr=1e-2, warmup=5)
    info = train_medusa(model, stream, cfg, val_ids=cycle_stream(800)[5:])
    after = info["val"]
    assert max(before["top1"]) < 0.3  # at init every head is the base's (random) next-token predictor
    # shared: one ResBlock must steer the base's fixed (random) lm_head, less capacity than a head's own copy
    floor = 0.5 if shared else 0.6
    assert min(after["top1"]) > floor and min(after["top1"]) > max(before["top1"]) + floor - 0.2
    assert after["top5"][0] >= after["top1"][0]
    assert len(after["rank"]) == 3 and len(after["rank"][0]) == 10
    assert sum(after["rank"][0][:5]) == pytest.approx(after["top5"][0])
    assert info["loss_curve"][-1][1] < info["loss_curve"][0][1]
    assert torch.equal(model.lm_head.weight, lm_head)  # Medusa-1: the (shared) lm_head stays the base's


def test_resume_gives_the_uninterrupted_weights(tmp_path):
    cfg = MedusaTraining(num_heads=2, steps=6, batch_size=2, block_size=16, warmup=1, lr=1e-2)
    stream = cycle_stream(400)
    straight = MedusaModel(tiny_llama(), num_heads=2)
    train_medusa(straight, stream, cfg)
    resumed = MedusaModel(tiny_llama(), num_heads=2)
    train_medusa(resumed, stream, cfg, checkpoint_dir=tmp_path, stop_after=3)
    again = MedusaModel(tiny_llama(), num_heads=2)  # a fresh process: same init, state from the checkpoint
    info = train_medusa(again, stream, cfg, checkpoint_dir=tmp_path)
    assert info["steps"] == 6
    for k, v in straight.heads.state_dict().items():
        torch.testing.assert_close(again.heads.state_dict()[k], v, rtol=0, atol=0)


def test_self_distillation_data_is_the_bases_greedy_continuation():
    base = tiny_llama(init=0.5)  # well-separated logits: no near-ties for batched vs cached numerics to split
    stream = cycle_stream(300)
    ids, labels = distill_data(base, stream, n=3, prompt_len=5, new_tokens=7,
                               generator=torch.Generator().manual_seed(0))
    assert ids.shape == labels.shape == (3, 12)
    assert (labels[:, :5] == IGNORE_INDEX).all() and torch.equal(labels[:, 5:], ids[:, 5:])
    with torch.no_grad():
        for row in ids:  # the reference: recompute the whole sequence, no cache, one row at a time
            seq = row[:5].unsqueeze(0)
            for _ in range(7):
                seq = torch.cat([seq, base(seq).logits[:, -1:].argmax(-1)], dim=1)
            assert torch.equal(seq[0], row)


def test_self_distilled_training_runs_and_reports_accuracy():
    model = MedusaModel(tiny_llama(), num_heads=2)
    cfg = MedusaTraining(num_heads=2, steps=3, batch_size=4, block_size=16, warmup=0, self_distill=True,
                         distill_sequences=8, distill_prompt=4, val_sequences=4)
    info = train_medusa(model, cycle_stream(300), cfg, val_ids=cycle_stream(100))
    assert info["train_sequences"] == 8 and len(info["val"]["top1"]) == 2


def test_trained_medusa_is_trained_once_and_reused(tmp_path):
    store = ArtifactStore(tmp_path)
    base = tiny_llama()
    cfg = MedusaTraining(num_heads=2, steps=3, batch_size=2, block_size=16, warmup=0)
    a, info_a = trained_medusa(store, base, cfg, cycle_stream(300), cycle_stream(100))
    b, info_b = trained_medusa(store, base, cfg, cycle_stream(300), cycle_stream(100))
    assert (store.trained, store.hits) == (1, 1)
    assert info_a == info_b and "val" in info_a
    for k, v in a.heads.state_dict().items():
        assert torch.equal(b.heads.state_dict()[k], v)
    base2 = tiny_llama(seed=1)  # other base weights: other heads
    trained_medusa(store, base2, cfg, cycle_stream(300), cycle_stream(100))
    assert store.trained == 2


def test_trained_medusa2_leaves_the_callers_base_alone(tmp_path):
    base = tiny_llama(tied=True)  # a tied output embedding: one tensor under two names in the store
    before = _state(base)
    cfg = MedusaTraining(num_heads=2, steps=2, batch_size=2, block_size=16, warmup=0, medusa2=True)
    store = ArtifactStore(tmp_path)
    model, _ = trained_medusa(store, base, cfg, cycle_stream(300))
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert model.base is not base
    again, _ = trained_medusa(store, base, cfg, cycle_stream(300))
    assert store.hits == 1
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    assert again.base.lm_head.weight is again.base.get_input_embeddings().weight


def test_token_blocks_and_bad_input():
    assert token_blocks(torch.arange(10), 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    with pytest.raises(ValueError, match="token_ids"):
        token_blocks(torch.zeros(2, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="fewer than one block"):
        token_blocks(torch.arange(2), 3)
    model = MedusaModel(tiny_llama(), num_heads=2)
    with pytest.raises(ValueError, match="num_heads"):
        train_medusa(model, cycle_stream(300), MedusaTraining(num_heads=3, block_size=16))
    with pytest.raises(TypeError, match="MedusaTraining"):
        train_medusa(model, cycle_stream(300), {"steps": 1})
