"""Language-model data and models: the standard-library character corpus (corpus.py) and the
tiny GPT-style character model every note shares (tiny.py)."""
from . import corpus, tiny
from .corpus import CharVocab, StdlibCorpus, load_stdlib_corpus, sample_blocks, stdlib_corpus, train_val_split
from .tiny import CharLMTraining, TinyLM, TinyLMConfig, count_params, evaluate_lm, train_char_lm

__all__ = ["corpus", "CharVocab", "StdlibCorpus", "load_stdlib_corpus", "stdlib_corpus", "train_val_split",
           "sample_blocks", "tiny", "TinyLM", "TinyLMConfig", "CharLMTraining", "train_char_lm", "evaluate_lm",
           "count_params"]
