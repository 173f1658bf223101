"""What an experiment is, what it is given, and what it returns.

An experiment measures its note's claim. Each part of the claim becomes a
`Check`: a measured value compared with a stated threshold. The verdict is
computed from the checks alone: all pass -> reproduced, none -> not reproduced,
some -> partial. Nobody writes a verdict by hand.
"""
from __future__ import annotations

import contextlib
import math
import operator
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from .stats import Interval

__all__ = [
    "VERDICTS",
    "Check",
    "Part",
    "Figure",
    "Table",
    "Result",
    "Context",
    "Experiment",
    "seed_everything",
    "compute_verdict",
    "single_thread",
    "NoteExperiment",
    "SCALES",
]

SCALES = ("tiny", "quick", "full")  # tiny: every code path in seconds, for the tests; verdicts mean nothing there

VERDICTS = ("reproduced", "not reproduced", "partial")

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}


@dataclass
class Check:
    """One measurable part of a claim: ``value op threshold``.

    ``label`` is the short name the summary tables show beside the value. A check
    decided over seeds carries its ``interval``; build it with ``ci_above``,
    ``ci_below`` or ``ci_within`` so that the value compared is the right bound.
    """

    name: str  # what is claimed, in words
    value: float  # what was measured
    op: str  # one of <=, <, >=, >
    threshold: float  # the bound the claim sets
    label: str = ""  # a few words for summary tables, e.g. "sigmoid rho"
    interval: Interval | None = None  # the seeds' mean and CI the value was taken from
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"Check op must be one of {sorted(_OPS)}, got {self.op!r}")
        self.value = float(self.value)
        self.threshold = float(self.threshold)
        # NaN never passes: a measurement that failed is not a reproduction.
        self.passed = bool(math.isfinite(self.value) and _OPS[self.op](self.value, self.threshold))

    @classmethod
    def ci_above(cls, name: str, interval: Interval, threshold: float = 0.0, label: str = "") -> "Check":
        """Passes when the whole interval lies above threshold: ci_low > threshold."""
        return cls(name, interval.low, ">", threshold, label=label, interval=interval)

    @classmethod
    def ci_below(cls, name: str, interval: Interval, threshold: float = 0.0, label: str = "") -> "Check":
        """Passes when the whole interval lies at or below threshold: ci_high <= threshold."""
        return cls(name, interval.high, "<=", threshold, label=label, interval=interval)

    @classmethod
    def ci_within(cls, name: str, interval: Interval, bound: float, label: str = "") -> "Check":
        """Passes when the whole interval lies in [-bound, bound]: max(|ci_low|, |ci_high|) <= bound."""
        return cls(name, max(abs(interval.low), abs(interval.high)), "<=", bound, label=label, interval=interval)

    def to_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "label": self.label,
            "value": self.value if math.isfinite(self.value) else None,
            "op": self.op,
            "threshold": self.threshold,
            "passed": self.passed,
        }
        if self.interval is not None:
            out["interval"] = self.interval.to_json()
        return out


@dataclass
class Part:
    """What one part of a claim contributes to the Result: its metrics, checks and tables."""

    metrics: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    tables: list["Table"] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # what the part's plot needs


@dataclass
class Figure:
    name: str  # file stem, unique within the experiment
    path: str  # relative to the run's output folder, e.g. figures/slug-name.png
    caption: str = ""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]


def compute_verdict(checks: list[Check]) -> str:
    if not checks:
        raise ValueError("a verdict needs at least one check")
    n_passed = sum(check.passed for check in checks)
    if n_passed == len(checks):
        return "reproduced"
    if n_passed == 0:
        return "not reproduced"
    return "partial"


@dataclass
class Result:
    """What ``run(ctx)`` returns."""

    metrics: dict[str, float]
    checks: list[Check]
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    summary: str = ""  # one or two sentences for the report, about what was measured

    @property
    def verdict(self) -> str:
        return compute_verdict(self.checks)

    @property
    def seeds(self) -> int:
        """How many seeds decided the verdict: the largest n of the checks' intervals, else 1."""
        return max([c.interval.n for c in self.checks if c.interval is not None], default=1)

    @property
    def thresholds(self) -> dict[str, dict[str, Any]]:
        return {c.name: {"op": c.op, "threshold": c.threshold} for c in self.checks}


@contextlib.contextmanager
def single_thread():
    """Runs the block with one torch thread, restoring the count after.

    Models this small run faster on one thread (no fork/join per tiny op, which is
    very slow on a shared CPU), and one thread makes every reduction, hence every
    number, independent of the machine's core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Seeds python, numpy and torch from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Context:
    """Everything an experiment may use from the runner."""

    slug: str
    scale: str  # "tiny" | "quick" | "full"
    seed: int
    device: str  # the device this note runs on: "cpu" | "cuda"
    out_dir: Path  # the run's output folder
    progress: Callable[[float, str], None] = lambda fraction, message="": None
    figures: list[Figure] = field(default_factory=list)
    artifacts: Any = None  # a deepnotes.artifacts.ArtifactStore for trained models notes share

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        self.out_dir = Path(self.out_dir)
        if self.artifacts is None:
            from ..artifacts import ArtifactStore

            self.artifacts = ArtifactStore(self.out_dir / "artifacts")

    @property
    def quick(self) -> bool:
        """True at quick and tiny scale (tiny is quick with smaller sizes)."""
        return self.scale != "full"

    @property
    def tiny(self) -> bool:
        return self.scale == "tiny"

    @property
    def figures_dir(self) -> Path:
        return self.out_dir / "figures"

    def pick(self, quick: Any, full: Any, tiny: Any = None) -> Any:
        """The value for the current scale; tiny falls back to quick's value when not given."""
        if self.scale == "full":
            return full
        if self.scale == "tiny" and tiny is not None:
            return tiny
        return quick

    def generator(self, offset: int = 0) -> torch.Generator:
        """A fresh torch.Generator on this note's device, seeded from the run's seed (+ offset)."""
        return torch.Generator(device=self.device).manual_seed(self.seed + offset)

    def save_figure(self, fig, name: str, caption: str = "") -> Figure:
        """Saves a matplotlib figure as figures/<slug>-<name>.png and closes it."""
        import matplotlib.pyplot as plt

        self.figures_dir.mkdir(parents=True, exist_ok=True)
        rel = f"figures/{self.slug}-{name}.png"
        fig.savefig(self.out_dir / rel, dpi=110, bbox_inches="tight")
        plt.close(fig)
        figure = Figure(name=name, path=rel, caption=caption)
        self.figures.append(figure)
        return figure


class NoteExperiment:
    """Base for the notes' experiments: set ``slug`` (title and claim come from the
    catalogue) and write ``measure(ctx)``. ``single_threaded = True`` runs it on one
    torch thread (see single_thread) and restores the count afterwards."""

    slug: str
    title: str
    claim: str
    single_threaded: bool = False
    devices: tuple[str, ...] = ("cpu",)  # where it can run; under --device cuda a CPU-only note says so

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        from .catalogue import NOTES_BY_SLUG

        note = NOTES_BY_SLUG[cls.slug]
        cls.title, cls.claim = note.title, note.claim

    def run(self, ctx: "Context") -> "Result":
        if self.single_threaded:
            with single_thread():
                return self.measure(ctx)
        return self.measure(ctx)

    def measure(self, ctx: "Context") -> "Result":
        raise NotImplementedError


class Experiment(Protocol):
    slug: str
    title: str
    claim: str
    devices: tuple[str, ...]

    def run(self, ctx: Context) -> Result: ...
