"""Runs experiments one process each, streaming results.json and report.html after every note.

Isolation: each note runs in its own process, forked from a clean server
process (multiprocessing's forkserver). A note that raises, segfaults, is
killed by a signal or by the kernel's out-of-memory killer is recorded as
`error` with its cause, and the run goes on with the next note.

Streaming: results.json and report.html are rewritten after every note, so an
interrupted run keeps what finished; ``resume=True`` keeps the notes already
finished in out_dir at the same scale, seed and commit, and runs the rest.

Devices: a note runs on the requested device when it lists it in its
``devices``; otherwise on the CPU, and its record says so.
"""
from __future__ import annotations

import signal
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from ..artifacts import ArtifactStore
from ..report.environment import collect_environment
from .base import Context, Result, seed_everything
from .catalogue import NOTES, NOTES_BY_SLUG

__all__ = ["run_notes", "Callbacks", "ResumeError", "note_device", "SCHEMA_VERSION"]

SCHEMA_VERSION = 2


class ResumeError(ValueError):
    """The folder to resume holds a results.json that cannot be read."""


class Callbacks:
    """Hooks for a progress display; the default does nothing."""

    def start(self, slug: str, index: int, total: int) -> None: ...

    def progress(self, slug: str, fraction: float, message: str) -> None: ...

    def done(self, slug: str, note: dict) -> None: ...


def note_device(experiment, requested: str) -> str:
    """The device a note runs on: the requested one if the experiment supports it, else the CPU."""
    return requested if requested in getattr(experiment, "devices", ("cpu",)) else "cpu"


def _note_record(slug: str, experiment, status: str, device: str) -> dict:
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
        "budget_seconds": info.budget_seconds,
        "device": device,
        "seeds": None,
        "error": None,
        "docs": info.docs,
    }


def _outcome(result: Result) -> dict:
    """The part of a note's record its Result decides."""
    from ..report.results import json_safe

    if not isinstance(result, Result):
        raise TypeError(f"run() must return a Result, got {type(result).__name__}")
    return json_safe({
        "verdict": result.verdict,
        "summary": result.summary,
        "metrics": dict(result.metrics),
        "checks": [c.to_json() for c in result.checks],
        "thresholds": result.thresholds,
        "figures": [asdict(f) for f in result.figures],
        "tables": [asdict(t) for t in result.tables],
        "seeds": result.seeds,
    })


def _execute(experiment, ctx: Context, seed: int) -> tuple[str, dict]:
    """Runs one experiment here; ("ok", outcome) or ("error", {"error": text, "figures": [...]})."""
    seed_everything(seed)  # each experiment sees the same global RNG state whatever ran before it
    try:
        result = experiment.run(ctx)
        if not result.figures:
            result.figures = list(ctx.figures)
        return "ok", _outcome(result)
    except Exception as err:  # an experiment's failure is reported, not fatal to the run
        return "error", {"error": f"{type(err).__name__}: {err}\n\n{traceback.format_exc(limit=8)}",
                         "figures": [asdict(f) for f in ctx.figures]}


def _child(experiment, ctx_kwargs: dict, seed: int, conn) -> None:
    """The body of a note's own process: progress and the outcome go back through conn."""
    def progress(fraction: float, message: str = "") -> None:
        conn.send(("progress", float(fraction), str(message)))

    ctx = Context(**ctx_kwargs, progress=progress)
    status, payload = _execute(experiment, ctx, seed)
    conn.send((status, payload))
    conn.close()


def _death_cause(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if -exitcode == signal.SIGKILL else ""
        return f"the note's process was killed by {name}{hint}"
    return f"the note's process exited with code {exitcode} before reporting a result"


def _run_isolated(experiment, ctx_kwargs: dict, seed: int, on_progress) -> tuple[str, dict]:
    from ..measure import fresh_process_context

    # Imported once by the server, not by every note: the experiments, pyplot, and torch._dynamo
    # (any torch optimizer imports it on its first step).
    mp = fresh_process_context(preload=("deepnotes.experiments", "matplotlib.pyplot", "torch._dynamo"))
    parent, child = mp.Pipe(duplex=False)
    proc = mp.Process(target=_child, args=(experiment, ctx_kwargs, seed, child), name=f"deepnotes-{ctx_kwargs['slug']}")
    proc.start()
    child.close()
    outcome = None
    try:
        while outcome is None:
            if parent.poll(0.2):
                try:
                    message = parent.recv()
                except EOFError:  # the process died: its exit code says how
                    break
                if message[0] == "progress":
                    on_progress(message[1], message[2])
                else:
                    outcome = message[0], message[1]
            elif not proc.is_alive() and not parent.poll(0):
                break
    finally:
        if outcome is None and proc.is_alive():
            proc.terminate()
        proc.join()
        parent.close()
    if outcome is None:
        return "error", {"error": _death_cause(proc.exitcode), "figures": []}
    return outcome


def _previous(out_dir: Path, scale: str, seed: int, commit: str | None) -> dict[str, dict]:
    """Notes finished (status ok) in out_dir's results.json by a run of the same scale, seed and commit."""
    from ..report.results import load_results

    if not (out_dir / "results.json").is_file():
        return {}
    try:
        doc = load_results(out_dir)
    except ValueError as err:
        raise ResumeError(f"cannot resume from {out_dir}: {err}") from None
    if doc["scale"] != scale or doc["seed"] != seed or doc["environment"].get("git_commit") != commit:
        return {}
    return {n["slug"]: n for n in doc["notes"] if n["status"] == "ok"}


def run_notes(
    slugs: Iterable[str] | None,
    *,
    registry: dict,
    scale: str = "quick",
    seed: int = 0,
    device: str = "cpu",
    out_dir: Path,
    callbacks: Callbacks | None = None,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    resume: bool = False,
    isolate: bool = True,
) -> dict:
    """Runs the named notes (all twelve when slugs is None) and returns results.json's document,
    which is also written, with report.html, into out_dir after every note.

    Notes without an experiment are recorded as 'not implemented'; an experiment
    that raises or whose process dies is recorded as 'error' and the others still
    run. ``cache_dir`` holds the artifact store (default: the user cache folder);
    ``use_cache=False`` trains everything afresh into a store inside out_dir.
    ``isolate=False`` runs the notes in this process (for debugging).
    """
    from ..report import write_report, write_results

    callbacks = callbacks or Callbacks()
    names = [n.slug for n in NOTES] if slugs is None else list(slugs)
    unknown = [s for s in names if s not in NOTES_BY_SLUG]
    if unknown:
        raise ValueError(f"unknown note(s): {', '.join(unknown)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    environment = collect_environment(device, seed)
    kept = _previous(out_dir, scale, seed, environment["git_commit"]) if resume else {}
    if use_cache:
        store = ArtifactStore(cache_dir)
    else:
        store = ArtifactStore(out_dir / "artifacts")  # shared by this run's notes, reused by none after it
    doc = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "scale": scale,
        "seed": seed,
        "device": device,
        "seconds": 0.0,
        "environment": environment,
        "notes": [],
    }
    started = time.perf_counter()
    runnable = [s for s in names if s in registry and s not in kept]

    def publish() -> None:
        doc["seconds"] = round(time.perf_counter() - started, 3)
        write_results(doc, out_dir)
        write_report(doc, out_dir)

    for slug in names:
        experiment = registry.get(slug)
        if slug in kept:
            doc["notes"].append(kept[slug])
            callbacks.done(slug, kept[slug])
            continue
        if experiment is None:
            doc["notes"].append(_note_record(slug, None, "not implemented", "cpu"))
            publish()
            continue
        run_on = note_device(experiment, device)
        record = _note_record(slug, experiment, "ok", run_on)
        callbacks.start(slug, runnable.index(slug), len(runnable))
        ctx_kwargs = dict(slug=slug, scale=scale, seed=seed, device=run_on, out_dir=out_dir, artifacts=store)

        def on_progress(fraction: float, message: str = "", _s: str = slug) -> None:
            callbacks.progress(_s, fraction, message)

        t0 = time.perf_counter()
        if isolate:
            status, payload = _run_isolated(experiment, ctx_kwargs, seed, on_progress)
        else:
            status, payload = _execute(experiment, Context(**ctx_kwargs, progress=on_progress), seed)
        record["seconds"] = round(time.perf_counter() - t0, 3)
        if status == "ok":
            record.update(payload)
        else:
            record.update(status="error", verdict="error", checks=[], thresholds={}, **payload)
        doc["notes"].append(record)
        publish()
        callbacks.done(slug, record)
    publish()
    return doc
