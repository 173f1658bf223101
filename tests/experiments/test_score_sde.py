"""Note 3 experiment: tiny-scale wiring, and the measures it is decided by."""
import math

import pytest
import torch

from deepnotes.experiments.score_sde import BOUND, FAR_FEWER, gaussian_likelihood, noise_floor


def test_tiny_run_is_wired(run_tiny):
    result, ctx = run_tiny("score-sde")
    labels = [c.label for c in result.checks]
    assert labels == ["euler_maruyama SW2/floor CI high", "pc SW2/floor CI high", "ode SW2/floor CI high",
                      "ODE NFE share CI high", "Gaussian NLL max error"]
    assert [c.threshold for c in result.checks] == [BOUND, BOUND, BOUND, FAR_FEWER, 1e-3]
    assert result.seeds == 2  # VP decided over two trained networks at tiny scale
    m = result.metrics
    assert m["vp_pc_nfe"] == 2 * 25  # one corrector step per predictor step
    assert m["vp_euler_maruyama_nfe"] == 1000
    assert sorted(f.name for f in ctx.figures) == ["samples", "sw2-vs-nfe"]
    assert ctx.artifacts.trained == 3  # 2 VP seeds + VE, stored for the other notes


def test_the_gaussian_likelihood_check_compares_with_the_closed_form():
    r = gaussian_likelihood(8, seed=0)
    assert r["max_abs_error"] <= 1e-3 and r["nfe"] > 0  # RK45 at 1e-5 on an exact score


def test_the_noise_floor_is_what_fresh_data_scores():
    from deepnotes.diffusion.data import toy_data
    from deepnotes.diffusion.metrics import sliced_wasserstein

    reference = toy_data("8gaussians", 2000, generator=torch.Generator().manual_seed(1))
    floor = noise_floor(reference, 500, 3, seed=10)
    direct = [float(sliced_wasserstein(toy_data("8gaussians", 500, generator=torch.Generator().manual_seed(10 + k)),
                                       reference, generator=torch.Generator().manual_seed(1))) for k in range(3)]
    assert floor == pytest.approx(sum(direct) / 3)
    assert 0 < floor < 0.5 and math.isfinite(floor)
