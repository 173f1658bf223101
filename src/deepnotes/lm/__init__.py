"""Language-model data and models: the standard-library character corpus (corpus.py) and the
tiny GPT-style character model every note shares (tiny.py); the stdlib split by file
(splits.py), a byte-level BPE (tokenizer.py) and the small transformers Llama code LM trained
on it (model.py, ``deepnotes lm``). Names are imported lazily from their modules, so `import deepnotes.lm` stays cheap."""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "corpus": ["CharVocab", "StdlibCorpus", "load_stdlib_corpus", "sample_blocks", "stdlib_corpus", "train_val_split"],
    "model": ["LMTraining", "build_lm", "corpus_tokenizer", "lm_config", "lm_param_count", "load_lm", "perplexity",
              "save_lm", "token_windows", "train_lm", "train_on_corpus", "trained_lm"],
    "splits": ["SPLITS", "code_corpus", "code_documents", "split_files", "split_sizes", "stdlib_splits"],
    "tiny": ["CharLMTraining", "TinyLM", "TinyLMConfig", "count_params", "evaluate_lm", "train_char_lm"],
    "tokenizer": ["encode", "encode_documents", "tokenizer_from_json", "tokenizer_to_json", "train_tokenizer"],
    "pretrained": [],
    "cli": [],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
