"""The code LM: sizes per scale, seeded build, training on fit (loss falls, exact resume), perplexity
against transformers' own loss, the save_pretrained folder, and the artifact store."""
import math

import pytest
import torch
import torch.nn.functional as F

from deepnotes.artifacts import ArtifactStore
from deepnotes.lm.model import (
    ARCHITECTURES, LMTraining, build_lm, corpus_tokenizer, load_lm, lm_config, lm_param_count, perplexity,
    save_lm, token_windows, train_lm, trained_lm,
)
from deepnotes.lm.splits import code_documents
from deepnotes.lm.tokenizer import encode_documents

RANGES = {"tiny": (10_000, 100_000), "quick": (1_000_000, 3_000_000), "full": (10_000_000, 30_000_000)}


def n_params(model):
    return sum(p.numel() for p in model.parameters())  # tied weights once


@pytest.mark.parametrize("scale", ["tiny", "quick", "full"])
def test_sizes_per_scale_and_the_draft_is_smaller(scale):
    vocab = LMTraining.preset(scale).vocab_size
    base = lm_param_count(lm_config(scale, vocab, "base"))
    draft = lm_param_count(lm_config(scale, vocab, "draft"))
    lo, hi = RANGES[scale]
    assert lo <= base <= hi
    assert draft < base / 3


@pytest.mark.parametrize("scale, role", [(s, r) for s, r in ARCHITECTURES if s != "full"])
def test_the_count_formula_is_the_built_models(scale, role):
    config = lm_config(scale, LMTraining.preset(scale).vocab_size, role)
    model = build_lm(config)
    assert n_params(model) == lm_param_count(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied


def test_the_count_formula_with_grouped_query_attention_and_untied_output():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False)
    assert n_params(LlamaForCausalLM(config)) == lm_param_count(config)


def test_build_is_seeded_and_leaves_the_global_generator_alone():
    config = lm_config("tiny", 320)
    state = torch.random.get_rng_state()
    a, b, c = build_lm(config, seed=1), build_lm(config, seed=1), build_lm(config, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 1, 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        lm_config("huge", 320)
    with pytest.raises(ValueError, match="role"):
        lm_config("tiny", 320, role="teacher")
    with pytest.raises(ValueError, match="vocab_size"):
        lm_config("tiny", 2)
    with pytest.raises(ValueError, match="warmup"):
        LMTraining(steps=10, warmup=11)
    with pytest.raises(ValueError, match="batch_size"):
        LMTraining(batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        LMTraining(precision="fp16")
    with pytest.raises(TypeError, match="token_ids"):
        token_windows(torch.zeros(10), 4)
    with pytest.raises(ValueError, match="block_size"):
        perplexity(build_lm(lm_config("tiny", 320)), torch.arange(10), 0)


def test_windows_overlap_by_one_token():
    ids = torch.arange(23)
    w = token_windows(ids, 5).tensors[0]
    assert w.shape == (4, 6)
    assert torch.equal(w[1], torch.arange(5, 11)) and torch.equal(w[:, 0], torch.tensor([0, 5, 10, 15]))


@pytest.fixture(scope="module")
def data():
    tok = corpus_tokenizer(320, 30_000)
    train = encode_documents(tok, code_documents("train", 30_000))
    val = encode_documents(tok, code_documents("validation", 4_000))
    return tok, train, val


TINY = LMTraining.preset("tiny", steps=24, warmup=2)


def test_training_lowers_the_held_out_loss(data, one_thread):
    _, train, val = data
    model = build_lm(TINY.config(), seed=0)
    before = perplexity(model, val, TINY.block_size)
    assert before == pytest.approx(320, rel=0.25)  # an untrained model is near uniform over the vocabulary
    info = train_lm(model, train, TINY, val_ids=val)
    assert info["steps"] == 24 and info["tokens"] == 24 * TINY.batch_size * TINY.block_size
    assert info["val_perplexity"] < 0.6 * before
    assert info["val_loss"] == pytest.approx(math.log(info["val_perplexity"]))
    assert info["final_loss"] < info["loss_curve"][0][1] - 0.5
    assert len(info["val_curve"]) == 5


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_weights(data, tmp_path, one_thread):
    _, train, _ = data
    training = LMTraining.preset("tiny", steps=6, warmup=2)
    straight = build_lm(training.config(), seed=0)
    train_lm(straight, train, training)
    resumed = build_lm(training.config(), seed=0)
    first = train_lm(resumed, train, training, checkpoint_dir=tmp_path, stop_after=3)
    assert first["steps"] == 3
    fresh = build_lm(training.config(), seed=0)  # as a new process would: only the checkpoint carries over
    second = train_lm(fresh, train, training, checkpoint_dir=tmp_path)
    assert second["steps"] == 6
    a, b = straight.state_dict(), fresh.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_perplexity_is_exp_of_the_mean_cross_entropy(one_thread):
    model = build_lm(lm_config("tiny", 50), seed=3).eval()
    ids = torch.randint(0, 50, (29,), generator=torch.Generator().manual_seed(0))
    # one window: transformers' own shifted loss
    with torch.no_grad():
        hf = model(input_ids=ids[None, :9], labels=ids[None, :9]).loss
    assert perplexity(model, ids[:9], block_size=8) == pytest.approx(math.exp(hf.item()), rel=1e-5)
    # several windows (8, 8, 8 and a last one of 4 predictions): token by token, each from its own context
    block, nll = 8, []
    with torch.no_grad():
        for i in range(1, ids.numel()):
            start = (i - 1) // block * block
            logits = model(input_ids=ids[None, start:i]).logits[0, -1]
            nll.append(-F.log_softmax(logits, -1)[ids[i]])
    assert perplexity(model, ids, block_size=block, batch_size=2) == pytest.approx(
        math.exp(torch.stack(nll).mean().item()), rel=1e-5)
    assert model.training is False


def test_the_saved_folder_is_a_transformers_model(data, tmp_path, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, _, _ = data
    model = build_lm(lm_config("tiny", 320), seed=0).eval()
    save_lm(tmp_path, model, tok, {"note": "x"})
    auto, auto_tok = AutoModelForCausalLM.from_pretrained(tmp_path).eval(), AutoTokenizer.from_pretrained(tmp_path)
    prompt = "def main(argv):\n    "
    ids = auto_tok(prompt, return_tensors="pt").input_ids
    assert ids[0].tolist() == tok(prompt).input_ids
    with torch.no_grad():
        assert torch.allclose(auto(ids).logits, model(ids).logits, atol=1e-6)
        out = auto.generate(ids, max_new_tokens=12, do_sample=False)
        ref = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert out.shape[1] <= ids.shape[1] + 12 and torch.equal(out, ref)
    assert auto_tok.decode(out[0]).startswith(prompt)
    loaded, loaded_tok, info = load_lm(tmp_path)
    assert info == {"note": "x"} and loaded_tok.eos_token_id == 1
    # a draft of the same recipe shares the vocabulary: transformers' assisted decoding runs on the pair
    draft = build_lm(lm_config("tiny", 320, role="draft"), seed=1).eval()
    with torch.no_grad():
        assisted = loaded.generate(ids, max_new_tokens=12, do_sample=False, assistant_model=draft)
    assert torch.equal(assisted, ref)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_lm(tmp_path / "nothing")


def test_the_store_trains_once_then_returns_the_same_model(tmp_path, one_thread):
    training = LMTraining.preset("tiny", steps=3, warmup=1, train_chars=20_000, tokenizer_chars=20_000,
                                 eval_chars=2_000)
    store = ArtifactStore(tmp_path)
    m1, tok1, info1 = trained_lm(store, training)
    assert store.trained == 1 and store.hits == 0
    m2, tok2, info2 = trained_lm(store, training)
    assert store.trained == 1 and store.hits == 1
    a, b = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert m2.lm_head.weight is m2.model.embed_tokens.weight  # still tied after loading
    assert info1 == info2 and "tokenizer" not in info2 and info2["params"] == n_params(m2)
    assert info2["test_perplexity"] > 1 and info2["steps"] == 3
    text = code_documents("test", 3_000)[0]
    assert tok1(text).input_ids == tok2(text).input_ids
    assert not m2.training
    assert info2["test_bits_per_char"] == pytest.approx(
        math.log2(info2["test_perplexity"]) * (info2["test_tokens"] - 1) / sum(map(len, code_documents("test", 2_000))))


def test_an_interrupted_store_training_resumes_from_its_checkpoint(tmp_path, monkeypatch, one_thread):
    """Interrupted after its last optimizer step (in the held-out scoring), the training resumes from the
    checkpoint in the store's work folder: no step is run twice and the weights equal an uninterrupted run's."""
    import deepnotes.lm.model as lm_model

    training = LMTraining.preset("tiny", steps=6, warmup=1, train_chars=20_000, tokenizer_chars=20_000,
                                 eval_chars=2_000)
    reference, _, _ = trained_lm(ArtifactStore(tmp_path / "uninterrupted"), training)
    store = ArtifactStore(tmp_path / "store")
    scoring = lm_model.perplexity

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lm_model, "perplexity", interrupt)
    with pytest.raises(KeyboardInterrupt):
        trained_lm(store, training)
    assert any((tmp_path / "store" / "work").glob("*/last.safetensors"))
    monkeypatch.setattr(lm_model, "perplexity", scoring)
    resumed, _, info = trained_lm(store, training)
    assert info["steps"] == 6 and info["loss_curve"] == []  # fit resumed at step 6: no step ran again
    a, b = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "store" / "work").exists() or not any((tmp_path / "store" / "work").iterdir())
