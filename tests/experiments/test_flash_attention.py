"""Note 6 experiment: tiny-scale wiring, and the pure parts it decides its verdict with."""
import math

import numpy as np
import pytest
import torch

from deepnotes.experiments.flash_attention import (TINY_CASES, exactness, memory_slope, peak_forward_bytes,
                                                   tile_invariance)


def test_tiny_run_is_wired(run_tiny):
    result, ctx = run_tiny("flash-attention")
    by_label = {c.label: c for c in result.checks}
    assert set(by_label) == {"output error / bound", "gradient error / bound", "tile-size output spread",
                             "ours memory slope", "naive memory slope", "ours / naive memory"}
    # thresholds are the note's, whatever the scale
    assert (by_label["ours memory slope"].op, by_label["ours memory slope"].threshold) == ("<=", 1.2)
    assert (by_label["naive memory slope"].op, by_label["naive memory slope"].threshold) == (">=", 1.8)
    assert (by_label["ours / naive memory"].op, by_label["ours / naive memory"].threshold) == ("<=", 0.05)
    m = result.metrics
    assert by_label["ours memory slope"].value == m["memory_slope_ours"]
    assert by_label["naive memory slope"].value == m["memory_slope_naive"]
    assert m["memory_ours_over_naive_at_max_n"] == pytest.approx(m["memory_ours_mib_at_max_n"]
                                                                 / m["memory_naive_mib_at_max_n"])
    assert {"causal_fwd_ours_over_sdpa_speed_N128", "causal_fwd_ours_over_sdpa_speed_N256"} <= set(m)
    assert all(v > 0 for k, v in m.items() if "speed" in k)
    assert sorted(f.name for f in ctx.figures) == ["blocks", "memory", "speed"]
    memory_table = next(t for t in result.tables if t.title.startswith("Peak extra memory"))
    assert [row[0] for row in memory_table.rows] == [256, 512]


@pytest.mark.parametrize("p", [0.5, 1.0, 2.0])
def test_memory_slope_of_an_exact_power_law_is_its_exponent(p):
    ns = [1024, 2048, 4096, 8192]
    assert memory_slope(ns, [3.0 * n**p for n in ns]) == pytest.approx(p, abs=1e-9)
    assert memory_slope(ns[-2:], [7.0 * n**p for n in ns[-2:]]) == pytest.approx(p, abs=1e-9)


def test_naive_forward_holds_three_n_by_n_buffers_in_a_fresh_process():
    # attention_reference keeps the scores, their exponentials and the probabilities: 3 N^2 fp32
    # (to a page or so), counted in full whatever the warm-up (forward_inputs) left behind.
    for N in (512, 1024):
        naive = peak_forward_bytes("naive", N, readings=1)
        if math.isnan(naive):
            pytest.skip("no /proc: peak memory is unavailable here")
        assert 2.9 <= naive / (4 * N * N) <= 3.3, (N, naive / (4 * N * N))


def test_exactness_and_tile_invariance_report_one_row_per_case_and_size():
    metrics, checks, table = exactness(TINY_CASES, torch.Generator().manual_seed(0))
    assert len(table.rows) == len(TINY_CASES) and len(checks) == 2
    assert all(np.isfinite(v) and v >= 0 for v in metrics.values())
    sizes = [(64, 64), (128, 64)]
    metrics, (check,), table, seconds = tile_invariance(192, sizes, 1, torch.Generator().manual_seed(0))
    assert set(seconds) == set(sizes) and len(table.rows) == 2
    assert check.value == metrics["tile_size_max_output_spread"]
