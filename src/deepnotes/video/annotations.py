"""Annotation lists in mmaction2's two formats, and UCF101's split files.

    video list     one line per video:        path label             ("a/b.mp4 3")
    frames list    one line per frame folder: dir total_frames label ("a/b 120 3")

Labels are 0-based integers. Fields are split from the right, so a path may contain spaces.
Blank lines and lines starting with '#' are skipped. A line with the wrong number of fields,
a non-integer, a negative label or one outside [0, num_classes) raises ValueError naming the
file and the 1-based line number.

UCF101 ships classInd.txt ("1 ApplyEyeMakeup", 1-based), trainlist0N.txt
("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1", 1-based) and testlist0N.txt (path only; the
label is the folder name looked up in classInd). read_ucf101_split turns these into 0-based
Samples and the class-name tuple.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

__all__ = ["Sample", "read_annotations", "read_ucf101_split", "write_annotations"]

KINDS = ("video", "frames")


@dataclass(frozen=True)
class Sample:
    """One annotated video: a file (kind "video") or a folder of frames with its frame count."""

    path: Path
    label: int
    total_frames: int | None = None


def _lines(path: Path):
    """(1-based line number, stripped text) of the non-blank, non-comment lines of a text file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"annotation file {str(path)!r} does not exist") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield number, line


def _int(text: str, what: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{where}: {what} must be an integer, got {text!r}") from None


def _join(root, rel: str) -> Path:
    return Path(root) / rel if root is not None else Path(rel)


def read_annotations(path: str | os.PathLike, root: str | os.PathLike | None = None, kind: str = "video",
                     num_classes: int | None = None) -> list[Sample]:
    """Samples of an mmaction2 annotation list; root (if given) is prepended to each relative path."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
    path = Path(path)
    n_fields = 2 if kind == "video" else 3
    layout = "'path label'" if kind == "video" else "'dir total_frames label'"
    samples = []
    for number, line in _lines(path):
        where = f"{path}, line {number}"
        fields = line.rsplit(maxsplit=n_fields - 1)
        if len(fields) != n_fields:
            raise ValueError(f"{where}: expected {layout} ({kind} list), got {line!r}")
        label = _int(fields[-1], "label", where)
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else "non-negative"
            raise ValueError(f"{where}: label {label} is outside {bound}")
        total = None
        if kind == "frames":
            total = _int(fields[1], "total_frames", where)
            if total < 1:
                raise ValueError(f"{where}: total_frames must be >= 1, got {total}")
        samples.append(Sample(_join(root, fields[0]), label, total))
    return samples


def write_annotations(path: str | os.PathLike, samples: Iterable[Sample], root: str | os.PathLike | None = None) -> Path:
    """Writes samples as an mmaction2 list (frames format when total_frames is set); paths relative to root."""
    lines = []
    for sample in samples:
        rel = Path(os.path.relpath(sample.path, root)) if root is not None else Path(sample.path)
        middle = f" {sample.total_frames}" if sample.total_frames is not None else ""
        lines.append(f"{rel.as_posix()}{middle} {sample.label}\n")
    path = Path(path)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _read_class_index(split_dir: Path) -> tuple[str, ...]:
    path = split_dir / "classInd.txt"
    names: dict[int, str] = {}
    for number, line in _lines(path):
        where = f"{path}, line {number}"
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 'index name', got {line!r}")
        index = _int(fields[0], "class index", where)
        if index in names:
            raise ValueError(f"{where}: class index {index} appears twice")
        names[index] = fields[1].strip()
    if sorted(names) != list(range(1, len(names) + 1)):
        raise ValueError(f"{path}: class indices must be 1..{len(names)}, got {sorted(names)}")
    return tuple(names[i] for i in range(1, len(names) + 1))


def read_ucf101_split(split_dir: str | os.PathLike, split: int = 1, subset: str = "train",
                      root: str | os.PathLike | None = None) -> tuple[list[Sample], tuple[str, ...]]:
    """(samples, class names) of UCF101 split `split` (1, 2 or 3), subset "train" or "test"; labels 0-based.

    A train line's label must agree with its folder's class; a test line's folder must be a class
    (case-insensitive, as UCF101's own files mix 'HandstandPushups' and 'HandStandPushups').
    """
    if split not in (1, 2, 3):
        raise ValueError(f"split must be 1, 2 or 3, got {split!r}")
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    split_dir = Path(split_dir)
    classes = _read_class_index(split_dir)
    by_folder = {name.lower(): i for i, name in enumerate(classes)}
    path = split_dir / f"{subset}list{split:02d}.txt"
    samples = []
    for number, line in _lines(path):
        where = f"{path}, line {number}"
        if subset == "train":
            fields = line.rsplit(maxsplit=1)
            if len(fields) != 2:
                raise ValueError(f"{where}: expected 'path label' (1-based), got {line!r}")
            rel, label = fields[0], _int(fields[1], "label", where) - 1
            if not 0 <= label < len(classes):
                raise ValueError(f"{where}: label {label + 1} is outside 1..{len(classes)} of classInd.txt")
        else:
            rel, label = line, None
        folder = Path(rel).parent.name.lower()
        if folder not in by_folder:
            if label is None:
                raise ValueError(f"{where}: folder {Path(rel).parent.name!r} is not a class of classInd.txt")
        elif label is not None and by_folder[folder] != label:
            raise ValueError(f"{where}: label {label + 1} ({classes[label]}) disagrees with the folder "
                             f"{Path(rel).parent.name!r} (class {by_folder[folder] + 1})")
        samples.append(Sample(_join(root, rel), by_folder[folder] if label is None else label))
    return samples, classes
