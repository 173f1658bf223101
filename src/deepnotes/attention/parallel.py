"""Coarse-grained parallelism for the CPU kernel: one tile step per core.

A tile step is ~10 torch ops. Left to torch, each op forks and joins its own
OpenMP team, so a call pays thousands of barriers, and on a loaded machine a
descheduled thread stalls every one of them. torch's own CPU flash kernel
avoids this with one parallel loop over (batch, head, query block). This
module does the same from Python: the work items (query tiles in the forward,
key tiles in the backward) are split into one list per core by their cost
(the number of visible tiles, longest first onto the least loaded worker) and
each list runs on a persistent worker thread whose torch ops are
single-threaded. torch ops release the GIL, so the workers compute in
parallel. The split depends only on the item costs, so results are bitwise
reproducible for a given thread count.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch

__all__ = ["partition", "run_parallel", "num_workers"]

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_LOCK = threading.Lock()
MIN_PARALLEL_WORK = 1 << 20  # score elements below which one thread with torch's own threading is faster


def num_workers() -> int:
    return max(1, torch.get_num_threads())


def partition(costs: Sequence[float], n_bins: int) -> list[list[int]]:
    """Longest-processing-time split of item indices into n_bins lists (each list in ascending item order)."""
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    load = [0.0] * n_bins
    for idx in sorted(range(len(costs)), key=lambda t: (-costs[t], t)):
        b = min(range(n_bins), key=lambda t: (load[t], t))
        bins[b].append(idx)
        load[b] += costs[idx]
    return [sorted(b) for b in bins if b]


def _pool(size: int) -> ThreadPoolExecutor:
    """A persistent pool whose threads run torch single-threaded (set once, per thread)."""
    global _POOL, _POOL_SIZE
    with _LOCK:
        if _POOL is None or _POOL_SIZE != size:
            if _POOL is not None:
                _POOL.shutdown(wait=True)
            caller_threads = torch.get_num_threads()
            barrier = threading.Barrier(size)

            def init() -> None:
                torch.set_num_threads(1)  # this thread's OpenMP/MKL teams: one thread

            _POOL = ThreadPoolExecutor(max_workers=size, initializer=init, thread_name_prefix="deepnotes-attn")
            # Start every worker now, so that all initialisers have run before the caller's
            # setting (also torch's default for threads created later) is restored.
            list(_POOL.map(lambda _: barrier.wait(), range(size)))
            torch.set_num_threads(caller_threads)
            _POOL_SIZE = size
        return _POOL


def run_parallel(work: Callable[[list[int], int], None], costs: Sequence[float], total_work: float) -> None:
    """Calls work(item_indices, worker_index) once per worker list; inline when small or single-threaded."""
    n = num_workers()
    if n == 1 or len(costs) < 2 or total_work < MIN_PARALLEL_WORK:
        work(list(range(len(costs))), 0)
        return
    lists = partition(costs, n)
    grad_mode = torch.is_grad_enabled()

    def run(args):
        items, w = args
        with torch.set_grad_enabled(grad_mode):  # grad mode is thread local
            work(items, w)

    for f in [_pool(n).submit(run, (items, w)) for w, items in enumerate(lists)]:
        f.result()
