r"""A byte-level BPE tokenizer for code, trained with `tokenizers`, used through transformers.

Byte-level BPE (GPT-2; Radford et al. 2019) maps text to UTF-8 bytes, each byte
to one of 256 printable symbols, and learns merges of adjacent symbols:

    start:  every byte is a token (the 256-symbol alphabet is always in the vocabulary)
    repeat: merge the most frequent adjacent pair (a, b) into ab, until |V| = vocab_size

Every string encodes (no unknown token) and decodes back exactly: decode(encode(s)) = s.
Words are first split by GPT-2's pattern, so merges never cross the boundary
between, say, a run of spaces and an identifier (indentation becomes its own tokens).

Three special tokens come first: ``<|bos|>`` (0), ``<|eos|>`` (1) and ``<|pad|>`` (2).
Encoding adds none of them; the training stream puts ``<|eos|>`` between files, so a
model learns to end a file and generate() stops there.

    tok = train_tokenizer([code_corpus("train", max_chars=2_000_000)], vocab_size=2048)
    tok.save_pretrained(folder); AutoTokenizer.from_pretrained(folder)   # the same ids
    ids = encode(tok, text)                                               # (n,) int64
"""
from __future__ import annotations

import json
from typing import Iterable

import torch

__all__ = ["BOS", "EOS", "PAD", "SPECIAL_TOKENS", "train_tokenizer", "wrap_tokenizer", "tokenizer_from_json",
           "tokenizer_to_json", "encode", "encode_documents"]

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)  # ids 0, 1, 2
BYTE_ALPHABET = 256


def wrap_tokenizer(backend):
    """A `tokenizers.Tokenizer` as transformers' PreTrainedTokenizerFast with bos/eos/pad set.

    clean_up_tokenization_spaces=False: transformers' clean-up would rewrite " ." as "." and
    break the exact round trip that code needs.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   clean_up_tokenization_spaces=False, model_max_length=1 << 30)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2):
    """A byte-level BPE with at most `vocab_size` tokens (specials and the 256 bytes included), learned
    from `texts`, as a transformers PreTrainedTokenizerFast.

    Fewer tokens come out when the texts run out of pairs seen min_frequency times. Training is
    deterministic: the same texts give the same vocabulary and merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < BYTE_ALPHABET + 3:
        raise ValueError(f"vocab_size must be an int >= {BYTE_ALPHABET + 3} (256 bytes + 3 special tokens), "
                         f"got {vocab_size!r}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be a positive int, got {min_frequency!r}")
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not one string (wrap it in a list)")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(backend)


def tokenizer_to_json(tokenizer) -> str:
    """The tokenizer's full definition (vocabulary, merges, pre-tokenizer, specials) as one JSON string."""
    return tokenizer.backend_tokenizer.to_str()


def tokenizer_from_json(text: str):
    """The PreTrainedTokenizerFast that tokenizer_to_json described (the same ids for every text)."""
    from tokenizers import Tokenizer

    try:
        json.loads(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"tokenizer_from_json: expected a tokenizer's JSON string: {err}") from None
    return wrap_tokenizer(Tokenizer.from_str(text))


def encode(tokenizer, text: str) -> torch.Tensor:
    """text -> (n,) int64 token ids, no special tokens added."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return torch.tensor(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids, dtype=torch.long)


def encode_documents(tokenizer, documents: Iterable[str]) -> torch.Tensor:
    """Documents -> one (n,) int64 stream, each document followed by <|eos|> (GPT-2's separator).

    The documents are encoded as a batch (in parallel, in `tokenizers`); the ids equal encoding
    each one alone.
    """
    docs = [d for d in documents if d]
    eos = tokenizer.convert_tokens_to_ids(EOS)
    out: list[int] = []
    for enc in tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=False):
        out.extend(enc.ids)
        out.append(eos)
    return torch.tensor(out, dtype=torch.long)
