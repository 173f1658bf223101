"""Note 5 experiment: tiny-scale wiring, and the closed forms its checks compare with."""
import math

import numpy as np
import pytest
import torch

from deepnotes.experiments.stochastic_approximation import (growth_exponent, log_grid, polyak, rm_nvar_limit,
                                                            running_mean_mse, running_mean_parity)


def test_tiny_run_is_wired(run_tiny):
    result, ctx = run_tiny("stochastic-approximation")
    assert [c.label for c in result.checks] == [
        "incremental = batch mean", "running-mean n*MSE", "RM a=2 n*Var", "RM a=1 n*Var", "RM a=0.25 exponent",
        "Kiefer-Wolfowitz shrink", "SPSA shrink", "Polyak n*MSE"]
    m = result.metrics
    assert m["runs"] == 200 and m["function_evaluations"] == 400
    assert m["rm_a2_m1_nvar_limit"] == pytest.approx(4 / 3) and m["rm_a1_m0.75_nvar_limit"] == pytest.approx(2.0)
    assert result.checks[2].value == pytest.approx(abs(m["rm_a2_m1_nvar"] / (4 / 3) - 1))
    assert result.checks[1].threshold == pytest.approx(4 * math.sqrt(2 / 199))
    assert sorted(f.name for f in ctx.figures) == ["kw-spsa", "mse-vs-n", "polyak", "rm-rates"]
    (table,) = result.tables
    assert [row[:2] for row in table.rows] == [["2", "1"], ["1", "0.75"], ["0.25", "1"]]


def test_rm_nvar_limit_closed_form():
    assert rm_nvar_limit(2.0, 1.0) == pytest.approx(4 / 3)
    assert rm_nvar_limit(1.0, 0.75) == pytest.approx(2.0)
    assert rm_nvar_limit(1.0, 1.0, sigma=2.0) == pytest.approx(4.0)  # a = 1/M': sigma^2 / M'^2
    assert math.isinf(rm_nvar_limit(0.25, 1.0))


@pytest.mark.parametrize("p", [-1.0, 0.5, 0.4])
def test_growth_exponent_of_an_exact_power_law(p):
    n = np.array([100, 300, 1000, 3000, 10_000])
    assert growth_exponent(n, 2.5 * n**p) == pytest.approx(p, abs=1e-9)


def test_running_mean_parts_are_exact_and_seeded():
    metrics, (check,) = running_mean_parity(50, torch.Generator().manual_seed(0))
    assert metrics["running_mean_max_abs_diff"] <= 1e-12 and check.passed
    a = running_mean_mse(20, 30, torch.Generator().manual_seed(3))
    b = running_mean_mse(20, 30, torch.Generator().manual_seed(3))
    assert a[0] == b[0] and np.array_equal(a[2][1], b[2][1])
    grid, mse = a[2]
    assert grid[0] == 1 and grid[-1] == 20 and len(mse) == len(grid)


def test_polyak_returns_curves_on_its_grid():
    metrics, (check,), (grid, avg, last) = polyak(50, 40, torch.Generator().manual_seed(0))
    assert grid[-1] == 50 and avg.shape == last.shape == grid.shape
    assert metrics["polyak_n_mse"] == avg[-1] and check.value == pytest.approx(abs(avg[-1] - 1.0))


@pytest.mark.parametrize("last", [50, 2000, 10_000])
def test_log_grid_keeps_both_ends(last):
    grid = log_grid(10, last, 12)
    assert grid[0] == 10 and grid[-1] == last and np.all(np.diff(grid) > 0)
