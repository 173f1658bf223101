"""Note 11's experiment: the pure helpers its verdicts rest on, and the whole run at tiny scale."""
import math

import pytest
import torch

from deepnotes.amp import FORMATS
from deepnotes.experiments.mixed_precision import (
    DECIDED,
    RUNS,
    format_rows,
    paired_relative_differences,
    relative_spread,
    suited_growth_interval,
)


def test_relative_spread_is_sample_sd_over_mean():
    assert relative_spread([1.0, 2.0, 3.0]) == pytest.approx(0.5)  # sd (n - 1) = 1, mean = 2
    assert relative_spread([0.2, 0.2]) == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        relative_spread([1.0])


def test_paired_relative_differences_pair_by_seed():
    assert paired_relative_differences([1.1, 0.9, 2.0], [1.0, 1.0, 1.0]) == pytest.approx([0.1, -0.1, 1.0])
    assert paired_relative_differences([0.5], [0.25]) == [1.0]
    with pytest.raises(ValueError, match="pair up"):
        paired_relative_differences([1.0, 2.0], [1.0])


def test_suited_growth_interval_lets_the_scale_double_several_times():
    assert suited_growth_interval(114) == 14
    assert suited_growth_interval(380) == 47
    assert suited_growth_interval(5) == 1
    for steps in (19, 114, 380, 5000):
        assert steps // suited_growth_interval(steps) >= 8


def test_format_table_equals_torch_finfo():
    rows, worst = format_rows()
    assert worst == 0.0
    assert [r[0] for r in rows] == [str(d).replace("torch.", "") for d in FORMATS]
    fp16 = rows[0]
    assert fp16[1] == "1/5/10" and float(fp16[4]) == torch.finfo(torch.float16).max


def test_tiny_run_decides_over_seeds(run_tiny):
    result, ctx = run_tiny("mixed-precision")
    n = int(result.metrics["seeds"])
    assert n == 2 and result.seeds == n
    by_label = {c.label: c for c in result.checks}
    assert set(by_label) == {"formats vs finfo", "bf16 vs fp32 loss", "fp16 + scaler vs fp32 loss",
                             "underflow unscaled", "underflow scaled"}
    for label in ("bf16 vs fp32 loss", "fp16 + scaler vs fp32 loss", "underflow unscaled", "underflow scaled"):
        assert by_label[label].interval is not None and by_label[label].interval.n == n
    # the tracking checks' bound is fp32's own spread, measured in the same run
    floor = result.metrics["fp32_seed_relative_spread"]
    assert all(by_label[f"{p} vs fp32 loss"].threshold == floor for p in DECIDED)
    m = result.metrics
    for key in ("bf16_rel_diff_mean", "fp16_scaler_rel_diff_mean", "fp16_scaler_short_rel_diff_mean",
                "underflow_all_unscaled_mean", "underflow_all_short_mean", "underflow_all_default_mean",
                "fp16_scaler_short_final_scale_min", "fp16_scaler_default_final_scale_min",
                "step_ms_fp32", "step_ms_bf16", "bf16_speed_vs_fp32"):
        assert key in m and math.isfinite(m[key]), key
    assert m["fp16_scaler_default_growth_interval"] == 2000
    assert m["fp16_scaler_short_growth_interval"] == suited_growth_interval(int(m["steps"]))
    assert {f.name for f in ctx.figures} == {"tracking", "gradient-histogram", "loss-curves"}
    per_seed = next(t for t in result.tables if t.title.startswith("Final training loss per seed"))
    assert len(per_seed.rows) == n and per_seed.columns[1:] == list(RUNS)
