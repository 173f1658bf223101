"""Byte-level BPE: exact round trip, deterministic training, the same ids after save/load."""
import pytest
import torch

from deepnotes.lm.splits import code_corpus, code_documents
from deepnotes.lm.tokenizer import (
    BOS, EOS, PAD, encode, encode_documents, tokenizer_from_json, tokenizer_to_json, train_tokenizer,
)

ODD = "héllo wörld ∑ 🐍\tTabs\r\nCRLF  \u00a0nbsp \x00 nul\n\n\n    indented()\n" + "ĀāĂ" * 3 + " trailing   "


@pytest.fixture(scope="module")
def train_text():
    return code_corpus("train", max_chars=120_000)


@pytest.fixture(scope="module")
def tok(train_text):
    return train_tokenizer([train_text], vocab_size=600)


def test_specials_bytes_and_vocabulary_size(tok):
    assert [tok.convert_tokens_to_ids(t) for t in (BOS, EOS, PAD)] == [0, 1, 2]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, PAD)
    assert len(tok) == 600
    assert tok("x = 1").input_ids == encode(tok, "x = 1").tolist()  # nothing added around the text
    # every one of the 256 bytes is a token: no unknown token is ever needed
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = tok.get_vocab()
    assert all(ch in vocab for ch in ByteLevel.alphabet()) and len(ByteLevel.alphabet()) == 256


@pytest.mark.parametrize("text", ["", " ", ODD, "def f(self):\n    return self.x  # ok\n"])
def test_round_trip_is_exact(tok, text):
    ids = encode(tok, text)
    assert ids.dtype == torch.long
    assert tok.decode(ids.tolist()) == text
    assert tok.decode(tok(text).input_ids) == text


def test_round_trip_on_held_out_code_and_it_compresses(tok):
    test = code_corpus("test", max_chars=40_000)
    ids = encode(tok, test)
    assert tok.decode(ids.tolist()) == test
    assert len(test) / ids.numel() > 2.0  # merges learned on code pay off on unseen code (bytes would be 1.0)


def test_training_is_deterministic(tok, train_text):
    again = train_tokenizer([train_text], vocab_size=600)
    assert tokenizer_to_json(again) == tokenizer_to_json(tok)


def test_save_pretrained_and_json_give_the_same_ids(tok, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    again = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    restored = tokenizer_from_json(tokenizer_to_json(tok))
    text = code_corpus("validation", max_chars=20_000) + ODD
    ids = tok(text).input_ids
    for other in (loaded, again, restored):
        assert other(text).input_ids == ids
        assert other.decode(ids) == text
        assert (other.bos_token_id, other.eos_token_id, other.pad_token_id) == (0, 1, 2)


def test_documents_are_joined_by_eos(tok):
    docs = code_documents("validation", max_chars=5_000)
    assert len(docs) >= 1
    docs = docs + ["a = 1\n", "", "b = 2"]
    stream = encode_documents(tok, docs)
    expected = []
    for d in docs:
        if d:
            expected += encode(tok, d).tolist() + [1]
    assert stream.tolist() == expected


def test_bad_arguments(train_text):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer([train_text], vocab_size=100)
    with pytest.raises(ValueError, match="min_frequency"):
        train_tokenizer([train_text], min_frequency=0)
    with pytest.raises(TypeError, match="iterable of strings"):
        train_tokenizer(train_text)
    with pytest.raises(ValueError, match="JSON"):
        tokenizer_from_json("not json")
