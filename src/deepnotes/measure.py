"""Timing and peak memory, measured one way everywhere (experiments and benchmarks).

Time: ``median_time`` for one function; ``interleaved_times`` for a side-by-side
comparison, the methods taking turns within each repeat so that a slow spell of
a shared machine lands on all of them, and ``speed_ratio`` for the ratio a check
or a benchmark reports. A check never compares a time with a constant, only
two times taken side by side.

Where: ``cpu_info`` records the machine a benchmark ran on (the vector capability torch
dispatches to, AVX2 or AVX-512, matters: bf16 is 14-23x slower than fp32 on AVX2 only).

Peak memory: ``peak_memory`` runs a call in a fresh process and reads how far
its peak resident size rose above the level before the call. A fresh process
matters: within one process the allocator keeps freed memory resident, so an
earlier, larger call hides a later call's peak, and the reading depends on
what ran before. The process is forked from a clean server process
(multiprocessing's forkserver, with torch preloaded), so it starts in
milliseconds with nothing of the caller's heap.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["median_time", "interleaved_times", "speed_ratio", "peak_memory", "fresh_process_context", "cpu_info"]


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """Median seconds per method, the methods taking turns within each repeat (after `warmup` calls each)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def speed_ratio(ours: Callable[[], object], peer: Callable[[], object], repeats: int = 3,
                warmup: int = 1) -> tuple[float, dict[str, float]]:
    """(peer seconds / our seconds, the medians): > 1 means ours is faster. Timed interleaved."""
    t = interleaved_times({"ours": ours, "peer": peer}, repeats, warmup)
    return t["peer"] / t["ours"], t


# --- peak memory in a fresh process ---------------------------------------------------------------

_PRELOAD: set[str] = {"torch"}


def fresh_process_context(preload: tuple[str, ...] = ()):
    """multiprocessing's forkserver context; its server imports torch (and `preload`) once, so each
    process forked from it starts in milliseconds. Modules asked for after the server has started
    are imported by each process instead."""
    context = multiprocessing.get_context("forkserver")
    if not set(preload) <= _PRELOAD:
        _PRELOAD.update(preload)
    context.set_forkserver_preload(sorted(_PRELOAD))
    return context


def _status_bytes(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    if match is None:
        raise OSError(f"/proc/self/status has no {field}")
    return int(match.group(1)) * 1024


def _release_free_memory() -> None:
    """Collects garbage and hands the heap's free pages back to the system (glibc), so that memory freed
    before the call is not resident at the start and then trimmed during it."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _measure_in_child(fn, make_inputs, args, conn) -> None:
    try:
        inputs = make_inputs(*args) if make_inputs is not None else args
        _release_free_memory()
        before = _status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        out = fn(*inputs)
        peak = _status_bytes("VmHWM")
        del out
        conn.send(("ok", float(max(peak - before, 0))))
    except OSError:
        conn.send(("ok", math.nan))  # no /proc here: the reading is unavailable, not zero
    except BaseException as err:  # noqa: BLE001 - reported to the caller, who re-raises
        conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


def peak_memory(fn: Callable[..., Any], make_inputs: Callable[..., tuple] | None = None, *args: Any,
                timeout: float = 600.0) -> float:
    """Peak resident bytes that ``fn(*make_inputs(*args))`` adds, measured in a fresh process.

    ``make_inputs(*args)`` runs first in the child and builds the inputs (not
    counted); then the peak of ``fn(*inputs)`` above the resident size before it
    is read from /proc (VmHWM after resetting it). Both must be picklable
    (module-level functions). NaN where /proc is not available. A failure in
    the child is raised here as RuntimeError.
    """
    ctx = fresh_process_context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_measure_in_child, args=(fn, make_inputs, args, child), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise RuntimeError(f"peak_memory: {getattr(fn, '__name__', fn)} did not finish in {timeout} s")
        status, value = parent.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"peak_memory: the measuring process died (exit code {proc.exitcode})") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        parent.close()
    if status != "ok":
        raise RuntimeError(f"peak_memory: {getattr(fn, '__name__', fn)} failed: {value}")
    return value


def cpu_info() -> dict:
    """The CPU a measurement ran on: torch's vector capability, model name, logical CPUs, torch
    threads and the 1-minute load average at the call (a busy machine inflates every timing)."""
    import torch

    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"capability": torch.backends.cpu.get_cpu_capability(), "model": model or platform.processor(),
            "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
