"""TinyLM: shapes, causality, matched parameters, init from a generator; its training loop and store."""
import pickle

import pytest
import torch

from deepnotes.artifacts import ArtifactStore
from deepnotes.lm import tiny
from deepnotes.lm.tiny import CharLMTraining, TinyLM, TinyLMConfig, char_lm, count_params, train_char_lm
from deepnotes.optim.schedules import warmup_cosine

ACTIVATIONS = ["relu", "gelu", "swiglu", "geglu"]


def small(activation="relu", seed=0, **kw):
    kw = {"vocab": 11, "d_model": 12, "n_layer": 2, "n_head": 3, "block": 10, **kw}
    return TinyLM(activation=activation, generator=torch.Generator().manual_seed(seed), **kw)


def ids(B=2, T=10, V=11, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_tokens_to_logits_shape_finite_and_backward(activation):
    model = small(activation)
    for T in (1, 7, 10):
        logits = model(ids(T=T))
        assert logits.shape == (2, T, 11) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_context_longer_than_the_block_and_bad_sizes_raise():
    with pytest.raises(ValueError, match="block"):
        small()(ids(T=11))
    with pytest.raises(ValueError, match="divisible"):
        TinyLM(11, d_model=10, n_head=3)
    with pytest.raises(ValueError, match="n_layer"):
        TinyLM(11, n_layer=0)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("t", [0, 4, 9])
def test_causal_changing_token_t_leaves_every_earlier_position_unchanged(activation, t):
    model = small(activation).eval()
    x = ids()
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % 11
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, t], b[:, t])  # the test is not vacuous: position t does see it


@pytest.mark.parametrize("d_model", [12, 48])
def test_gated_ffn_at_two_thirds_width_matches_the_plain_parameter_count(d_model):
    # d_ff = 4 d_model is a multiple of 3 when d_model is: the 2/3 cut is exact.
    models = {a: small(a, d_model=d_model, n_head=3) for a in ACTIVATIONS}
    counts = {a: count_params(m) for a, m in models.items()}
    assert len(set(counts.values())) == 1, counts
    for a, m in models.items():
        ffn = m.blocks[0].ffn
        assert count_params(ffn) == 2 * d_model * 4 * d_model  # W1, W2: d x 4d each, or W, V, W2 at 8d/3
        assert ffn.d_hidden == (4 * d_model if a in ("relu", "gelu") else 8 * d_model // 3)
    # Tied embeddings (no output matrix): V d + T d, per block 4 d² attention + 8 d² FFN + two LayerNorms, final LN.
    V, T, L, d = 11, 10, 2, d_model
    assert counts["relu"] == V * d + T * d + L * (4 * d * d + 8 * d * d + 4 * d) + 2 * d


def test_init_follows_the_generator_alone_and_leaves_torch_global_state():
    before = torch.get_rng_state()
    a, b, c = small(seed=5), small(seed=5), small(seed=6)
    assert torch.equal(before, torch.get_rng_state())
    for (name, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(p, q), name
        if p.dim() >= 2:
            assert not torch.equal(p, r), name
    # GPT-2's init: matrices N(0, 0.02²), LayerNorm (1, 0).
    big = TinyLM(64, d_model=96, n_layer=1, n_head=4, generator=torch.Generator().manual_seed(0))
    w = big.blocks[0].ffn.w_in.weight.detach()
    assert abs(float(w.std()) - tiny.INIT_STD) < 0.001 and abs(float(w.mean())) < 0.001
    assert torch.equal(big.ln.weight, torch.ones(96)) and torch.equal(big.ln.bias, torch.zeros(96))
    assert TinyLM.from_config(a.config, generator=torch.Generator().manual_seed(5)).state_dict().keys() == \
        a.state_dict().keys()


def test_config_and_training_settings_are_picklable_and_json_able():
    cfg, training = TinyLMConfig(vocab=11, activation="swiglu"), CharLMTraining(steps=3)
    assert pickle.loads(pickle.dumps((cfg, training))) == (cfg, training)
    assert cfg.to_dict()["activation"] == "swiglu" and training.to_dict()["min_ratio"] == 0.1


def stream(n=4000):
    return torch.arange(n) % 11  # a periodic stream: the next token is a function of the current one


def test_training_is_deterministic_follows_the_warmup_cosine_schedule_and_learns(monkeypatch):
    training = CharLMTraining(steps=30, batch=8, block=10, lr=1e-2, warmup=3, eval_every=10, val_batches=2)
    lrs = []
    real_set_lr = tiny.set_lr
    monkeypatch.setattr(tiny, "set_lr", lambda opt, step, schedule: lrs.append(real_set_lr(opt, step, schedule)[0]))
    runs = [train_char_lm(small(), stream(), stream(500), training, torch.Generator().manual_seed(3))
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert [s for s, _ in runs[0]["curve"]] == [10, 20, 30]
    want = [1e-2 * warmup_cosine(t, warmup_steps=3, total_steps=30, min_ratio=0.1) for t in range(1, 31)]
    assert lrs[:30] == pytest.approx(want) and lrs[29] == pytest.approx(1e-3)
    assert runs[0]["val_loss"] < 0.5 * torch.log(torch.tensor(11.0)).item()  # well below a uniform guess


def test_char_lm_trains_once_then_loads_the_same_model_and_info(tmp_path):
    store = ArtifactStore(tmp_path)
    cfg, training = TinyLMConfig(vocab=11, d_model=12, n_head=3, block=10), CharLMTraining(
        steps=3, batch=4, block=10, warmup=1, eval_every=2, val_batches=2)
    m1, info1 = char_lm(store, cfg, training, 7, stream(), stream(500))
    m2, info2 = char_lm(store, cfg, training, 7, stream(), stream(500))
    assert (store.trained, store.hits) == (1, 1) and info1 == info2
    assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values()))
    char_lm(store, cfg, training, 7, stream(3999), stream(500))  # other data: another recipe
    char_lm(store, cfg, training, 8, stream(), stream(500))  # another seed
    assert (store.trained, store.hits) == (3, 1)


def test_the_number_of_validation_batches_does_not_move_the_training_batches():
    weights = []
    for val_batches in (1, 3):
        model = small()
        training = CharLMTraining(steps=3, batch=4, block=10, warmup=1, eval_every=3, val_batches=val_batches)
        train_char_lm(model, stream(), stream(500), training, torch.Generator().manual_seed(4))
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
