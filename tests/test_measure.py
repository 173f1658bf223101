"""Peak memory in a fresh process, independent of what the caller allocated before; timing helpers."""
import math

import pytest
import torch

from deepnotes.experiments.parallel import map_runs
from deepnotes.measure import interleaved_times, peak_memory, speed_ratio

MIB = 2**20


def make_size(n_bytes):
    torch.ones(1024).sum()  # first-op set-up (thread pool, allocator arenas) is not the call's memory
    return (n_bytes,)


def allocate(n_bytes):
    x = torch.ones(n_bytes // 4)  # float32: every page touched
    return float(x[-1])


def test_peak_memory_reads_the_bytes_a_call_allocates():
    reading = peak_memory(allocate, make_size, 64 * MIB)
    if math.isnan(reading):
        pytest.skip("no /proc on this system: peak memory cannot be read")
    assert 60 * MIB <= reading <= 80 * MIB


def test_peak_memory_does_not_depend_on_what_this_process_did_before():
    first = peak_memory(allocate, make_size, 32 * MIB)
    big = torch.ones(64 * MIB // 4)  # held here, then freed: a shared-heap reading would change
    del big
    second = peak_memory(allocate, make_size, 32 * MIB)
    if math.isnan(first):
        pytest.skip("no /proc on this system: peak memory cannot be read")
    assert abs(second - first) <= 4 * MIB


def fails():
    raise ValueError("inside the child")


def test_a_failing_call_is_reported():
    try:
        peak_memory(fails)
    except RuntimeError as err:
        assert "inside the child" in str(err)
    else:
        raise AssertionError("expected RuntimeError")


def test_interleaved_times_and_ratio_have_one_median_per_method():
    times = interleaved_times({"a": lambda: sum(range(100)), "b": lambda: sum(range(200))}, repeats=3)
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())
    ratio, medians = speed_ratio(lambda: None, lambda: None, repeats=2)
    assert ratio == medians["peer"] / medians["ours"]


def seeded_draw(seed, n):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g).sum().item(), torch.get_num_threads()


def test_map_runs_gives_the_same_results_in_parallel_and_in_order_on_one_thread_each():
    args = [(s, 1000) for s in range(4)]
    serial = map_runs(seeded_draw, args, workers=1)
    parallel = map_runs(seeded_draw, args, workers=2)
    assert [v for v, _ in serial] == [v for v, _ in parallel]
    assert all(threads == 1 for _, threads in serial + parallel)


def crashes_on(seed):
    import ctypes

    if seed == 1:
        ctypes.string_at(0)  # SIGSEGV in the worker
    return seed


def test_map_runs_raises_when_a_worker_dies_instead_of_hanging():
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):
        map_runs(crashes_on, [(0,), (1,)], workers=2)
