"""Note 9 experiment: tiny-scale wiring, and its closed forms."""
import math

import pytest

from deepnotes.experiments.sde_intro import BOUND, alpha_bar_table, convergence_order


def test_tiny_run_is_wired(run_tiny):
    result, ctx = run_tiny("sde-intro")
    assert [c.label for c in result.checks] == ["√ᾱ_1000 − 0.006353", "gap increases", "convergence order",
                                                "SW2(DDPM, SDE)/floor CI high"]
    assert result.checks[-1].threshold == BOUND
    assert result.checks[0].passed and result.checks[1].passed and result.checks[2].passed  # closed forms
    assert result.seeds == 2
    assert sorted(f.name for f in ctx.figures) == ["alpha-bar", "samples"]
    assert ctx.artifacts.trained == 2


def test_the_continuous_value_is_the_closed_form():
    t = alpha_bar_table(ns=(1000,))
    assert t["continuous"] == pytest.approx(math.exp(-0.25 * (20 - 0.1) - 0.5 * 0.1), rel=1e-12)
    assert t["continuous"] == pytest.approx(0.006572, abs=5e-7)  # references/score_sde.md


def test_convergence_order_of_an_exact_power_law():
    ns = [10, 100, 1000]
    assert convergence_order(ns, [3.0 / n for n in ns]) == pytest.approx(1.0)
    assert convergence_order(ns, [-2.0 / n**2 for n in ns]) == pytest.approx(2.0)
