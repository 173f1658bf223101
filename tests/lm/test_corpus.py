"""The standard-library character corpus: deterministic, robust to bad files, no network."""
import sysconfig
import warnings
from pathlib import Path

import pytest
import torch

from deepnotes.lm.corpus import (
    UNKNOWN, CharVocab, load_stdlib_corpus, sample_blocks, stdlib_corpus, stdlib_files, stdlib_root, train_val_split,
)


def test_root_is_the_standard_library_and_files_are_sorted_python_sources():
    root = stdlib_root()
    assert root == Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files()
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == sorted(rel) and len(rel) > 100
    assert all(r.endswith(".py") for r in rel)
    assert "os.py" in rel and "json/decoder.py" in rel
    assert not any("site-packages" in r or r.startswith("test/") for r in rel)
    assert len(stdlib_files(include_tests=True)) > len(files)


def test_same_arguments_same_text_and_max_chars_is_exact():
    a = stdlib_corpus(max_chars=200_000, seed=3)
    b = stdlib_corpus(max_chars=200_000, seed=3)
    assert a.text == b.text and a.files == b.files
    assert len(a.text) == 200_000
    c = stdlib_corpus(max_chars=200_000, seed=4)
    assert c.files != a.files  # the seed picks the sample of modules
    d = stdlib_corpus(max_chars=50_000, seed=None)
    assert d.files == [p.relative_to(stdlib_root()).as_posix() for p in stdlib_files()][: len(d.files)]
    assert load_stdlib_corpus(max_chars=1000, seed=3) == a.text[:1000]


def test_the_text_is_the_files_contents(tmp_path):
    (tmp_path / "b.py").write_text("print('b')\n", encoding="utf-8")
    (tmp_path / "a.py").write_text("x = 1\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not python", encoding="utf-8")
    corpus = stdlib_corpus(root=tmp_path, seed=None)
    assert corpus.files == ["a.py", "b.py"]
    assert corpus.text == "x = 1\n\n\nprint('b')\n"


def test_bad_files_are_skipped_with_one_warning_and_counted(tmp_path):
    (tmp_path / "good.py").write_text("ok = True\n", encoding="utf-8")
    (tmp_path / "latin1.py").write_bytes(b"name = '\xe9t\xe9'\n")  # not UTF-8
    (tmp_path / "dir.py").mkdir()  # a directory named like a source file
    (tmp_path / "broken.py").symlink_to(tmp_path / "missing.py")  # unreadable
    with pytest.warns(RuntimeWarning, match="skipped 2"):
        corpus = stdlib_corpus(root=tmp_path, seed=None)
    assert corpus.files == ["good.py"]
    assert sorted(corpus.skipped) == ["broken.py", "latin1.py"]
    assert corpus.text == "ok = True\n"


def test_empty_folder_warns_and_returns_empty_text(tmp_path):
    with pytest.warns(RuntimeWarning, match="empty"):
        assert stdlib_corpus(root=tmp_path).text == ""
    with pytest.raises(FileNotFoundError, match="directory"):
        stdlib_corpus(root=tmp_path / "nope")
    with pytest.raises(ValueError, match="max_chars"):
        stdlib_corpus(max_chars=0)


def test_the_real_library_loads_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corpus = stdlib_corpus(max_chars=300_000, seed=0)
    assert corpus.skipped == [] and "def " in corpus.text and "import " in corpus.text


def test_train_val_split():
    train, val = train_val_split("abcdefghij", 0.2)
    assert (train, val) == ("abcdefgh", "ij")
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split("abc", 1.0)


def test_char_vocab_round_trip_and_unknown():
    vocab = CharVocab.from_text("hello world")
    assert vocab.itos[0] == UNKNOWN and len(vocab) == vocab.size == 1 + len(set("hello world"))
    ids = vocab.encode("hello")
    assert ids.dtype == torch.long and ids.shape == (5,)
    assert vocab.decode(ids) == "hello"
    assert vocab.encode("hex")[-1].item() == 0 and vocab.decode(vocab.encode("hex")) == "he" + UNKNOWN
    with pytest.raises(ValueError, match="ids"):
        vocab.decode([99])


def test_char_vocab_max_size_keeps_the_most_frequent():
    vocab = CharVocab.from_text("aaaabbbcc d", max_size=3)
    assert vocab.itos == [UNKNOWN, "a", "b"]
    text = load_stdlib_corpus(max_chars=100_000)
    big = CharVocab.from_text(text, max_size=128)
    assert len(big) <= 128 and all(c in big.stoi for c in "def return(): ")


def test_sample_blocks_are_next_character_windows():
    ids = torch.arange(100)
    x, y = sample_blocks(ids, block_size=8, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y, x + 1)
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)
    x2, _ = sample_blocks(ids, 8, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="block_size"):
        sample_blocks(ids[:5], 8, 2)
