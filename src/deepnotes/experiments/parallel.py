"""Independent runs (seeds, grid cells) on all cores, one torch thread each.

Small models train faster on one thread than on several, and a run on one
thread gives the same numbers on any machine; so the independent runs of an
experiment go to one process per core instead. Each run takes its randomness
from its own arguments (a seed), never from a global generator, so the results
are the same whether the runs go in parallel or one after another.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch

from ..measure import fresh_process_context
from .base import Part

__all__ = ["map_runs", "cpu_workers", "Plan", "run_plans"]


def cpu_workers() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _one_thread() -> None:
    torch.set_num_threads(1)


def _call(fn_args: tuple[Callable, tuple]) -> Any:
    fn, args = fn_args
    return fn(*args)


def map_runs(fn: Callable[..., Any], arg_tuples: Iterable[Sequence[Any]], workers: int | None = None,
             preload: tuple[str, ...] = ()) -> list[Any]:
    """[fn(*args) for args in arg_tuples], on up to `workers` processes (default: one per core).

    fn must be a module-level function and its arguments and results picklable.
    With one worker (or one run) everything runs here, on one thread. ``preload``: more modules the
    workers should find imported.
    """
    jobs = [(fn, tuple(args)) for args in arg_tuples]
    workers = min(workers or cpu_workers(), len(jobs))
    if workers <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return [_call(job) for job in jobs]
        finally:
            torch.set_num_threads(threads)
    # The server imports fn's module (and torch._dynamo, which any torch optimizer imports on its first
    # step) once; the workers forked from it start with both imported. A worker that dies (a crash, a
    # module that fails to import) raises BrokenProcessPool here instead of hanging the pool.
    context = fresh_process_context(preload=(fn.__module__, "torch._dynamo", *preload))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        return list(pool.map(_call, jobs))


@dataclass
class Plan:
    """A part whose runs are independent: ``runs`` are (fn, args) with fn module-level, ``finish`` turns
    their results, in order, into the Part."""

    runs: list[tuple[Callable, tuple]]
    finish: Callable[[list], Part]


def _apply(fn: Callable, args: tuple):
    return fn(*args)


def run_plans(plans: list[Plan], workers: int | None = None) -> list[Part]:
    """Every plan's runs through one map_runs pool (one process per core), in the plans' order, so slow
    runs listed first leave the short ones to fill the cores at the end."""
    runs = [run for plan in plans for run in plan.runs]
    out = map_runs(_apply, runs, workers=workers, preload=tuple(sorted({fn.__module__ for fn, _ in runs})))
    parts, k = [], 0
    for plan in plans:
        parts.append(plan.finish(out[k:k + len(plan.runs)]))
        k += len(plan.runs)
    return parts
