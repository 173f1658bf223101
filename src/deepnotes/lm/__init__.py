"""Language-model data and models: the standard-library character corpus (corpus.py)."""
from . import corpus
from .corpus import CharVocab, StdlibCorpus, load_stdlib_corpus, sample_blocks, stdlib_corpus, train_val_split

__all__ = ["corpus", "CharVocab", "StdlibCorpus", "load_stdlib_corpus", "stdlib_corpus", "train_val_split",
           "sample_blocks"]
