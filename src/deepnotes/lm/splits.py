r"""The standard library's .py files split by file into train / validation / test.

A split by file keeps every module whole, so the test text is code the model
never saw in any part (a split by character offset would cut one file in two
and put its first half in training). A file's place is decided by its name
alone:

    key(f) = sha256(f"{seed}:{f}")        order the files by key, then cut
    n_val = round(n · p_val),  n_test = round(n · p_test),  n_train = n − n_val − n_test

so the assignment does not depend on the order the files were listed in, and
the same seed gives the same split on every machine with the same Python. The
key order is a seeded shuffle too: a ``max_chars`` prefix of a split samples
many modules rather than the first few alphabetically.

Size on CPython 3.11.7 (the standard library without its test suites: 734 files,
12.1 MB), fractions (0.9, 0.05, 0.05), seed 0 (``split_sizes()``):

    train        660 files   10,626,637 characters
    validation    37 files      350,176 characters
    test          37 files    1,141,876 characters

    code_corpus("train", max_chars=2_000_000)   # text of the split's files, joined by blank lines
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Sequence, TypeVar

from .corpus import FILE_SEPARATOR, stdlib_files, stdlib_root

__all__ = ["SPLITS", "split_files", "stdlib_splits", "code_documents", "code_corpus", "split_sizes"]

SPLITS = ("train", "validation", "test")
F = TypeVar("F", str, Path)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(not isinstance(f, (int, float)) or f < 0 for f in fractions):
        raise ValueError(f"fractions must be three non-negative numbers (train, validation, test), got {fractions!r}")
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(fractions)})")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def split_files(files: Sequence[F], fractions: Sequence[float] = (0.9, 0.05, 0.05),
                seed: int = 0) -> dict[str, list[F]]:
    """{"train": [...], "validation": [...], "test": [...]}: a partition of `files` by file.

    `files` are names (relative paths are best: an absolute path puts the machine's folder into
    the key). Each list is in key order (a seeded shuffle, see the module docstring); the three
    are disjoint and together hold every file once. ValueError for duplicate files.
    """
    p_train, p_val, p_test = _check_fractions(fractions)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    names = [Path(f).as_posix() for f in files]
    if len(set(names)) != len(names):
        raise ValueError("split_files: files must be distinct, got duplicates")
    keyed = sorted(zip(names, files), key=lambda nf: hashlib.sha256(f"{seed}:{nf[0]}".encode()).hexdigest())
    ordered = [f for _, f in keyed]
    n = len(ordered)
    n_val, n_test = round(n * p_val), round(n * p_test)
    n_train = n - n_val - n_test
    return {"train": ordered[:n_train], "validation": ordered[n_train:n_train + n_val],
            "test": ordered[n_train + n_val:]}


def stdlib_splits(fractions: Sequence[float] = (0.9, 0.05, 0.05), seed: int = 0, root: str | Path | None = None,
                  include_tests: bool = False) -> dict[str, list[str]]:
    """split_files over the standard library's .py files (corpus.stdlib_files), as relative paths."""
    root = Path(root) if root is not None else stdlib_root()
    rel = [p.relative_to(root).as_posix() for p in stdlib_files(root, include_tests)]
    return split_files(rel, fractions, seed)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _read(root: Path, files: Sequence[str], max_chars: int | None) -> list[str]:
    """The files' texts, cut so that FILE_SEPARATOR.join(texts) has at most max_chars characters."""
    parts, skipped, total = [], [], 0
    for rel in files:
        if max_chars is not None and total >= max_chars:
            break
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, ValueError):
            skipped.append(rel)
            continue
        if not text.strip():
            continue
        if parts:
            total += len(FILE_SEPARATOR)
        if max_chars is not None and total + len(text) > max_chars:
            text = text[: max(0, max_chars - total)]
        if not text:  # the cut fell inside the separator: drop it again
            total -= len(FILE_SEPARATOR)
            break
        parts.append(text)
        total += len(text)
    if skipped:
        warnings.warn(f"code_corpus: skipped {len(skipped)} unreadable or non-UTF-8 file(s) under {root}: "
                      f"{', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}", RuntimeWarning, stacklevel=3)
    return parts


def _check_max_chars(max_chars) -> None:
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise ValueError(f"max_chars must be a positive int or None, got {max_chars!r}")


def code_documents(split: str, max_chars: int | None = None, *, fractions: Sequence[float] = (0.9, 0.05, 0.05),
                   seed: int = 0, root: str | Path | None = None, include_tests: bool = False) -> list[str]:
    """The texts of one split's files in key order, the last one cut so that joined by blank lines
    they hold at most max_chars characters: FILE_SEPARATOR.join(code_documents(...)) == code_corpus(...).

    Empty files are left out; unreadable or non-UTF-8 ones are skipped with one warning.
    """
    _check_split(split)
    _check_max_chars(max_chars)
    root = Path(root) if root is not None else stdlib_root()
    return _read(root, stdlib_splits(fractions, seed, root, include_tests)[split], max_chars)


def code_corpus(split: str, max_chars: int | None = None, *, fractions: Sequence[float] = (0.9, 0.05, 0.05),
                seed: int = 0, root: str | Path | None = None, include_tests: bool = False) -> str:
    """The text of one split: its files in key order joined by blank lines, at most max_chars characters."""
    return FILE_SEPARATOR.join(code_documents(split, max_chars, fractions=fractions, seed=seed, root=root,
                                              include_tests=include_tests))


def split_sizes(fractions: Sequence[float] = (0.9, 0.05, 0.05), seed: int = 0, root: str | Path | None = None,
                include_tests: bool = False) -> dict[str, dict[str, int]]:
    """{split: {"files": number of files, "chars": characters of code_corpus(split)}}."""
    root = Path(root) if root is not None else stdlib_root()
    splits = stdlib_splits(fractions, seed, root, include_tests)
    sizes = {}
    for name, files in splits.items():
        sizes[name] = {"files": len(files), "chars": len(FILE_SEPARATOR.join(_read(root, files, None)))}
    return sizes
