"""A character-level text corpus from the Python standard library's own source.

Every Python installation ships megabytes of carefully written code, so the
corpus needs no download and is the same on every machine with the same Python
version. Files are read in a deterministic order (sorted relative paths, then
an optional seeded shuffle, so a `max_chars` prefix samples many modules rather
than the first few alphabetically). Files that cannot be read or decoded as
UTF-8 are skipped with one warning and counted; loading never fails because of
one bad file.

    corpus = stdlib_corpus(max_chars=1_000_000, seed=0)   # StdlibCorpus(text, files, skipped)
    text = load_stdlib_corpus(max_chars=1_000_000)        # just the text
    train, val = train_val_split(text, val_fraction=0.1)
    vocab = CharVocab.from_text(train)                    # index 0 is the unknown character
    ids = vocab.encode(train)                             # (n,) int64
    x, y = sample_blocks(ids, block_size=64, batch_size=32, generator=g)   # (B, T), next-char targets
"""
from __future__ import annotations

import os
import random
import sysconfig
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

__all__ = ["StdlibCorpus", "CharVocab", "stdlib_root", "stdlib_files", "stdlib_corpus", "load_stdlib_corpus",
           "train_val_split", "sample_blocks", "UNKNOWN"]

UNKNOWN = "\ufffd"  # the replacement character stands for every character outside the vocabulary
FILE_SEPARATOR = "\n\n"
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_root() -> Path:
    """The standard library's directory, from sysconfig (not the virtual environment's site-packages)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: str | Path | None = None, include_tests: bool = False) -> list[Path]:
    """Every *.py under root (default: the standard library), sorted by relative path.

    Third-party packages and caches are excluded; so are test suites (test/, tests/, idle_test/)
    unless include_tests=True.
    """
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"stdlib_files: root must be a directory, got {str(root)!r}")
    skip = set(_SKIP_DIRS) if include_tests else _SKIP_DIRS | {"test", "tests", "idle_test"}
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]  # prune: never descend into site-packages
        files.extend(Path(folder, n) for n in names if n.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


@dataclass
class StdlibCorpus:
    text: str  # the files' contents joined by blank lines
    files: list[str] = field(default_factory=list)  # relative paths actually used, in order
    skipped: list[str] = field(default_factory=list)  # relative paths that could not be read or decoded

    def __len__(self) -> int:
        return len(self.text)


def stdlib_corpus(max_chars: int | None = None, seed: int | None = 0, root: str | Path | None = None,
                  include_tests: bool = False) -> StdlibCorpus:
    """Reads the corpus: files in sorted order (shuffled by `seed` unless seed is None), until max_chars.

    The text is cut at exactly max_chars characters when given. Unreadable or non-UTF-8 files are
    skipped; one warning names how many and the first few.
    """
    if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 1):
        raise ValueError(f"stdlib_corpus: max_chars must be a positive int or None, got {max_chars!r}")
    root = Path(root) if root is not None else stdlib_root()
    files = stdlib_files(root, include_tests)
    if seed is not None:
        random.Random(seed).shuffle(files)
    parts, used, skipped, total = [], [], [], 0
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, ValueError):
            skipped.append(rel)
            continue
        if not text.strip():
            continue
        parts.append(text)
        used.append(rel)
        total += len(text) + len(FILE_SEPARATOR)
        if max_chars is not None and total >= max_chars:
            break
    if skipped:
        warnings.warn(f"stdlib_corpus: skipped {len(skipped)} unreadable or non-UTF-8 file(s) under {root}: "
                      f"{', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}", RuntimeWarning, stacklevel=2)
    if not parts:
        warnings.warn(f"stdlib_corpus: no readable .py files under {root}; the corpus is empty", RuntimeWarning,
                      stacklevel=2)
    text = FILE_SEPARATOR.join(parts)
    if max_chars is not None:
        text = text[:max_chars]
    return StdlibCorpus(text=text, files=used, skipped=skipped)


def load_stdlib_corpus(max_chars: int | None = None, seed: int | None = 0, root: str | Path | None = None,
                       include_tests: bool = False) -> str:
    """The text of stdlib_corpus(...)."""
    return stdlib_corpus(max_chars, seed, root, include_tests).text


def train_val_split(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """The first 1 - val_fraction of the characters for training, the rest for validation (nanoGPT's split)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"train_val_split: val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(round(len(text) * (1.0 - val_fraction)))
    return text[:cut], text[cut:]


class CharVocab:
    """Characters <-> integer ids. Index 0 is UNKNOWN, which every unseen character encodes to."""

    def __init__(self, chars: Iterable[str]):
        chars = [c for c in dict.fromkeys(chars) if c != UNKNOWN]
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharVocab: every entry must be a single character")
        self.itos: list[str] = [UNKNOWN] + chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.itos)}

    @classmethod
    def from_text(cls, text: str, max_size: int | None = None) -> "CharVocab":
        """Vocabulary of text's characters, most frequent first (ties by code point); at most max_size ids."""
        if max_size is not None and max_size < 1:
            raise ValueError(f"CharVocab.from_text: max_size must be >= 1 (index 0 is UNKNOWN), got {max_size}")
        counts = Counter(text)
        counts.pop(UNKNOWN, None)
        ranked = sorted(counts, key=lambda c: (-counts[c], c))
        if max_size is not None:
            ranked = ranked[: max_size - 1]
        return cls(sorted(ranked))

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> torch.Tensor:
        """str -> (len(text),) int64."""
        return torch.tensor([self.stoi.get(c, 0) for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        """(n,) ints -> str."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if any(not 0 <= i < len(self.itos) for i in ids):
            raise ValueError(f"CharVocab.decode: ids must lie in [0, {len(self.itos)}), got min {min(ids)}, "
                             f"max {max(ids)}")
        return "".join(self.itos[i] for i in ids)


def sample_blocks(ids: torch.Tensor, block_size: int, batch_size: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of a token stream: x (B, T) and its next-token targets y (B, T)."""
    if ids.dim() != 1 or ids.numel() <= block_size:
        raise ValueError(f"sample_blocks: ids must be 1-D and longer than block_size={block_size}, "
                         f"got shape {tuple(ids.shape)}")
    start = torch.randint(0, ids.numel() - block_size, (batch_size,), generator=generator)
    offsets = start[:, None] + torch.arange(block_size)  # (B, T)
    return ids[offsets], ids[offsets + 1]
