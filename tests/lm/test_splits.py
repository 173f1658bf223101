"""The stdlib split by file: a deterministic partition, independent of listing order, text by split."""
import hashlib

import pytest

from deepnotes.lm.corpus import FILE_SEPARATOR, stdlib_files, stdlib_root
from deepnotes.lm.splits import SPLITS, code_corpus, code_documents, split_files, split_sizes, stdlib_splits

NAMES = [f"pkg{i % 7}/mod_{i}.py" for i in range(200)]


def test_a_partition_of_every_file_with_the_stated_sizes():
    s = split_files(NAMES, (0.8, 0.1, 0.1), seed=0)
    assert list(s) == list(SPLITS)
    flat = [f for name in SPLITS for f in s[name]]
    assert sorted(flat) == sorted(NAMES) and len(flat) == len(set(flat))
    assert [len(s[n]) for n in SPLITS] == [160, 20, 20]
    assert [len(v) for v in split_files(NAMES[:7], (0.9, 0.05, 0.05)).values()] == [7, 0, 0]  # round(0.35) = 0


def test_deterministic_and_decided_by_the_name_alone():
    a = split_files(NAMES, seed=3)
    assert a == split_files(list(reversed(NAMES)), seed=3)  # listing order does not matter
    assert a != split_files(NAMES, seed=4)
    # the order within a split is the order of sha256(f"{seed}:{name}")
    key = lambda f: hashlib.sha256(f"3:{f}".encode()).hexdigest()  # noqa: E731
    assert a["train"] == sorted(a["train"], key=key)
    assert sorted(NAMES, key=key)[-len(a["test"]):] == a["test"]


def test_paths_come_back_as_given():
    from pathlib import Path

    paths = [Path(n) for n in NAMES[:20]]
    s = split_files(paths, (0.5, 0.25, 0.25))
    assert all(isinstance(p, Path) for v in s.values() for p in v)
    assert sorted(p for v in s.values() for p in v) == sorted(paths)


@pytest.mark.parametrize("fractions", [(0.9, 0.1), (0.5, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_files(NAMES, fractions)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="distinct"):
        split_files(["a.py", "a.py"])
    with pytest.raises(ValueError, match="split"):
        code_corpus("val")
    with pytest.raises(ValueError, match="max_chars"):
        code_corpus("train", max_chars=0)


def test_the_stdlib_split_covers_every_stdlib_file():
    root = stdlib_root()
    every = [p.relative_to(root).as_posix() for p in stdlib_files()]
    s = stdlib_splits()
    assert sorted(f for v in s.values() for f in v) == sorted(every)
    assert not set(s["train"]) & set(s["test"]) and not set(s["train"]) & set(s["validation"])
    assert len(s["test"]) == round(0.05 * len(every)) == len(s["validation"])


@pytest.fixture()
def tree(tmp_path):
    files = {f"m{i}.py": f"# module {i}\n" + "x = 1\n" * (i + 1) for i in range(40)}
    files["empty.py"] = "  \n"
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path, files


def test_a_split_is_its_files_text_in_key_order(tree):
    root, files = tree
    s = stdlib_splits((0.5, 0.25, 0.25), root=root)
    for name in SPLITS:
        docs = code_documents(name, root=root, fractions=(0.5, 0.25, 0.25))
        assert docs == [files[f] for f in s[name] if files[f].strip()]
        assert code_corpus(name, root=root, fractions=(0.5, 0.25, 0.25)) == FILE_SEPARATOR.join(docs)
    sizes = split_sizes((0.5, 0.25, 0.25), root=root)
    assert sum(v["files"] for v in sizes.values()) == 41
    assert sizes["test"]["chars"] == len(code_corpus("test", root=root, fractions=(0.5, 0.25, 0.25)))


@pytest.mark.parametrize("max_chars", [1, 13, 14, 15, 16, 100, 257])
def test_max_chars_cuts_a_prefix_and_documents_join_to_the_text(tree, max_chars):
    root, _ = tree
    full = code_corpus("train", root=root)
    cut = code_corpus("train", max_chars, root=root)
    assert full.startswith(cut) and max_chars - len(FILE_SEPARATOR) <= len(cut) <= max_chars
    assert FILE_SEPARATOR.join(code_documents("train", max_chars, root=root)) == cut


def test_an_unreadable_file_is_skipped_with_a_warning(tree):
    root, _ = tree
    (root / "bad.py").write_bytes(b"\xff\xfe\x00 not utf-8")
    name = next(n for n in SPLITS if "bad.py" in stdlib_splits(root=root)[n])
    with pytest.warns(RuntimeWarning, match="bad.py"):
        text = code_corpus(name, root=root)
    assert "not utf-8" not in text
