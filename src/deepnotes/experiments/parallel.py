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
from typing import Any, Callable, Iterable, Sequence

import torch

from ..measure import fresh_process_context

__all__ = ["map_runs", "cpu_workers"]


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


def map_runs(fn: Callable[..., Any], arg_tuples: Iterable[Sequence[Any]], workers: int | None = None) -> list[Any]:
    """[fn(*args) for args in arg_tuples], on up to `workers` processes (default: one per core).

    fn must be a module-level function and its arguments and results picklable.
    With one worker (or one run) everything runs here, on one thread.
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
    context = fresh_process_context(preload=(fn.__module__, "torch._dynamo"))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        return list(pool.map(_call, jobs))
