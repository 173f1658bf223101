"""Runs experiments in order, isolating failures, and builds the results document."""
from __future__ import annotations

import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from ..report.environment import collect_environment
from .base import Context, Result, seed_everything
from .catalogue import NOTES, NOTES_BY_SLUG

__all__ = ["run_notes", "Callbacks"]


class Callbacks:
    """Hooks for a progress display; the default does nothing."""

    def start(self, slug: str, index: int, total: int) -> None: ...

    def progress(self, slug: str, fraction: float, message: str) -> None: ...

    def done(self, slug: str, note: dict) -> None: ...


def _note_record(slug: str, experiment, status: str) -> dict:
    info = NOTES_BY_SLUG[slug]
    return {
        "number": info.number,
        "slug": slug,
        "title": getattr(experiment, "title", info.title),
        "claim": getattr(experiment, "claim", info.claim),
        "status": status,
        "verdict": status if status != "ok" else "partial",
        "summary": "",
        "metrics": {},
        "checks": [],
        "thresholds": {},
        "figures": [],
        "tables": [],
        "seconds": None,
        "error": None,
        "docs": info.docs,
    }


def _fill(record: dict, result: Result, figures) -> None:
    if not isinstance(result, Result):
        raise TypeError(f"run() must return a Result, got {type(result).__name__}")
    record["verdict"] = result.verdict
    record["summary"] = result.summary
    record["metrics"] = dict(result.metrics)
    record["checks"] = [c.to_json() for c in result.checks]
    record["thresholds"] = result.thresholds
    record["figures"] = [asdict(f) for f in (result.figures or figures)]
    record["tables"] = [asdict(t) for t in result.tables]


def run_notes(
    slugs: Iterable[str] | None,
    *,
    registry: dict,
    scale: str = "quick",
    seed: int = 0,
    device: str = "cpu",
    out_dir: Path,
    callbacks: Callbacks | None = None,
) -> dict:
    """Runs the named notes (all twelve when slugs is None) and returns results.json's document.

    Notes without an experiment are recorded as 'not implemented'; an experiment
    that raises is recorded as 'error' and the others still run.
    """
    callbacks = callbacks or Callbacks()
    names = [n.slug for n in NOTES] if slugs is None else list(slugs)
    unknown = [s for s in names if s not in NOTES_BY_SLUG]
    if unknown:
        raise ValueError(f"unknown note(s): {', '.join(unknown)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    notes = []
    runnable = [s for s in names if s in registry]
    for slug in names:
        experiment = registry.get(slug)
        if experiment is None:
            notes.append(_note_record(slug, None, "not implemented"))
            continue
        record = _note_record(slug, experiment, "ok")
        callbacks.start(slug, runnable.index(slug), len(runnable))
        ctx = Context(slug=slug, scale=scale, seed=seed, device=device, out_dir=out_dir,
                      progress=lambda fraction, message="", _s=slug: callbacks.progress(_s, fraction, message))
        seed_everything(seed)  # each experiment sees the same RNG state whatever ran before it
        t0 = time.perf_counter()
        try:
            _fill(record, experiment.run(ctx), ctx.figures)
        except Exception as err:  # an experiment's failure is reported, not fatal to the run
            record.update(status="error", verdict="error", checks=[], thresholds={},
                          figures=[asdict(f) for f in ctx.figures],
                          error=f"{type(err).__name__}: {err}\n\n{traceback.format_exc(limit=8)}")
        record["seconds"] = round(time.perf_counter() - t0, 3)
        notes.append(record)
        callbacks.done(slug, record)
    return {
        "schema_version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "scale": scale,
        "seed": seed,
        "device": device,
        "seconds": round(time.perf_counter() - started, 3),
        "environment": collect_environment(device, seed),
        "notes": notes,
    }
