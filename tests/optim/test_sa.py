"""Stochastic approximation against closed forms (references/fundamentals.md, section e)."""
import math

import numpy as np
import pytest
import torch

from deepnotes.optim import sa


def gaussian_observer(slope, sigma=1.0, root=0.0):
    def observe(theta, generator):
        return slope * (theta - root) + sigma * torch.randn(theta.shape, generator=generator, dtype=theta.dtype)

    return observe


# --- running mean -----------------------------------------------------------------

def test_running_mean_equals_batch_mean_of_every_prefix():
    x = torch.randn(500, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 7
    got = sa.running_mean(x)
    want = torch.stack([x[: n + 1].mean() for n in range(len(x))])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_running_mean_batches_along_dim0_and_keeps_shape():
    x = torch.randn(50, 3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = sa.running_mean(x)
    assert got.shape == x.shape
    want = x.cumsum(0) / torch.arange(1, 51, dtype=torch.float64).view(-1, 1, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_running_mean_edge_inputs():
    assert sa.running_mean(torch.empty(0)).shape == (0,)
    torch.testing.assert_close(sa.running_mean([1, 2, 3, 6]), torch.tensor([1.0, 1.5, 2.0, 3.0]))
    with pytest.raises(ValueError, match="xs"):
        sa.running_mean(torch.tensor(1.0))


def test_sgd_with_lr_one_over_n_on_half_squared_error_is_the_running_mean():
    xs = torch.randn(200, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    theta = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=1.0)
    path = []
    for n, x in enumerate(xs, start=1):
        opt.param_groups[0]["lr"] = 1.0 / n
        opt.zero_grad()
        (0.5 * (theta - x) ** 2).backward()
        opt.step()
        path.append(theta.detach().clone())
    torch.testing.assert_close(torch.stack(path), sa.running_mean(xs), rtol=0, atol=1e-12)


def test_robbins_monro_with_one_over_n_steps_is_the_running_mean():
    xs = torch.randn(300, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    step = iter(range(len(xs)))

    def observe(theta, generator):  # N(theta) = theta - X_n
        return theta - xs[next(step)]

    it = sa.robbins_monro(observe, torch.tensor(123.0, dtype=torch.float64), len(xs), sa.power_step(1.0))
    assert it.shape == (len(xs) + 1,)
    torch.testing.assert_close(it[1:], sa.running_mean(xs), rtol=0, atol=1e-12)


def test_running_mean_mse_is_sigma_squared_over_n():
    runs, n, sigma = 20_000, 200, 2.0
    x = sigma * torch.randn(n, runs, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mse = (sa.running_mean(x) ** 2).mean(dim=1)
    ns = torch.arange(1, n + 1, dtype=torch.float64)
    se = math.sqrt(2 / (runs - 1))  # relative s.e. of a Gaussian variance estimate
    rel = (mse * ns / sigma**2 - 1).abs()
    # 200 correlated estimates: allow 4.5 s.e. for the largest.
    assert float(rel.max()) < 4.5 * se


# --- Robbins-Monro rates ------------------------------------------------------------

@pytest.mark.parametrize("a, slope, want", [(2.0, 1.0, 1.3334), (1.0, 0.75, 1.9914)])
def test_exact_variance_recursion_reference_values(a, slope, want):
    v = sa.rm_variance_recursion(a, slope, 1.0, 10_000, v0=1.0)
    assert 10_000 * float(v[-1]) == pytest.approx(want, abs=1e-4)


def test_exact_variance_recursion_slow_regime_grows_like_sqrt_n():
    v = sa.rm_variance_recursion(0.25, 1.0, 1.0, 10_000, v0=1.0)
    got = [n * float(v[n]) for n in (100, 1_000, 10_000)]
    assert got == pytest.approx([8.3, 26.6, 84.3], abs=0.05)


def test_exact_variance_recursion_limits():
    v = sa.rm_variance_recursion(2.0, 1.0, 1.0, 200_000, v0=1.0)
    assert 200_000 * float(v[-1]) == pytest.approx(4 / 3, rel=1e-4)


@pytest.mark.parametrize("a, slope", [(2.0, 1.0), (1.0, 0.75), (0.25, 1.0)])
def test_robbins_monro_monte_carlo_matches_exact_variance(a, slope):
    runs, n = 20_000, 2_000
    theta0 = torch.ones(runs, dtype=torch.float64)  # theta_0 - theta* = 1
    it = sa.robbins_monro(gaussian_observer(slope), theta0, n, sa.power_step(a),
                          generator=torch.Generator().manual_seed(6))
    exact = sa.rm_variance_recursion(a, slope, 1.0, n, v0=1.0)
    for k in (10, 100, n):
        mc = float((it[k] ** 2).mean())
        # The error is exactly Gaussian with mean (prod of factors) != 0 early on;
        # its second moment has relative s.e. <= sqrt(2/runs) * (1 + small).
        assert abs(mc / float(exact[k]) - 1) < 5 * math.sqrt(2 / runs), (k, mc, float(exact[k]))


def test_robbins_monro_finds_root_of_nonlinear_function_at_target():
    # M(theta) = theta^3 + theta, solve M(theta) = 10 -> theta = 2.
    def observe(theta, generator):
        return theta**3 + theta + 0.5 * torch.randn(theta.shape, generator=generator, dtype=theta.dtype)

    it = sa.robbins_monro(observe, torch.zeros(64, dtype=torch.float64), 5_000, sa.power_step(0.5, 0.8, offset=10),
                          generator=torch.Generator().manual_seed(7), target=10.0)
    assert float((it[-1] - 2).abs().max()) < 0.05


def test_robbins_monro_step_size_forms_agree():
    obs = gaussian_observer(1.0)
    kw = dict(theta0=torch.zeros(8, dtype=torch.float64), n_steps=20)
    a = sa.robbins_monro(obs, step_size=sa.power_step(1.0), generator=torch.Generator().manual_seed(0), **kw)
    b = sa.robbins_monro(obs, step_size=[1 / n for n in range(1, 21)], generator=torch.Generator().manual_seed(0),
                         **kw)
    c = sa.robbins_monro(obs, step_size=torch.tensor([1 / n for n in range(1, 21)], dtype=torch.float64),
                         generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_same_generator_seed_gives_identical_iterates():
    obs = gaussian_observer(1.0)
    runs = [sa.robbins_monro(obs, torch.zeros(5), 50, 0.1, generator=torch.Generator().manual_seed(11))
            for _ in range(2)]
    assert torch.equal(*runs)


def test_bad_arguments_raise_value_errors_naming_them():
    obs = gaussian_observer(1.0)
    with pytest.raises(ValueError, match="a must be"):
        sa.power_step(-1.0)
    with pytest.raises(ValueError, match="power"):
        sa.power_step(1.0, power=-0.5)
    with pytest.raises(ValueError, match="n_steps"):
        sa.robbins_monro(obs, torch.zeros(2), -1, 0.1)
    with pytest.raises(ValueError, match="step_size has 3 values but n_steps=5"):
        sa.robbins_monro(obs, torch.zeros(2), 5, [0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="step_size must be positive"):
        sa.robbins_monro(obs, torch.zeros(2), 5, 0.0)
    with pytest.raises(ValueError, match="observe returned shape"):
        sa.robbins_monro(lambda t, g: t.sum(), torch.zeros(2), 5, 0.1)
    with pytest.raises(ValueError, match="perturbation c must be positive"):
        sa.spsa_gradient(lambda t, g: t.sum(-1), torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="theta0"):
        sa.kiefer_wolfowitz(lambda t, g: t, torch.tensor(0.0), 3, 0.1, 0.1)


# --- zero-order minimisation ---------------------------------------------------------

def test_spsa_gradient_is_unbiased_with_variance_norm_g_squared_minus_g_i_squared():
    g = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    runs = 200_000
    theta = torch.zeros(runs, 3, dtype=torch.float64)
    est = sa.spsa_gradient(lambda t, gen: t @ g, theta, c=0.1, generator=torch.Generator().manual_seed(8))
    mean, var = est.mean(0), est.var(0)
    want_var = g.pow(2).sum() - g.pow(2)  # (13, 10, 5)
    torch.testing.assert_close(want_var, torch.tensor([13.0, 10.0, 5.0], dtype=torch.float64))
    assert torch.all((mean - g).abs() < 5 * (want_var / runs).sqrt())
    torch.testing.assert_close(var, want_var, rtol=0.02, atol=0)


def test_kiefer_wolfowitz_on_noise_free_quadratic_is_gradient_descent():
    # Central differences are exact on a quadratic, so KW with a constant step is GD.
    theta_star = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    f = lambda t, gen: 0.5 * ((t - theta_star) ** 2).sum(-1)  # noqa: E731
    it = sa.kiefer_wolfowitz(f, torch.zeros(3, dtype=torch.float64), 40, 0.5, 0.1)
    gd = [torch.zeros(3, dtype=torch.float64)]
    for _ in range(40):
        gd.append(gd[-1] - 0.5 * (gd[-1] - theta_star))
    torch.testing.assert_close(it, torch.stack(gd), rtol=0, atol=1e-12)
    assert it.shape == (41, 3)


@pytest.mark.parametrize("method", ["kw", "spsa"])
def test_zero_order_methods_minimise_a_noisy_quadratic(method):
    theta_star = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)

    def f(theta, gen):
        return ((theta - theta_star) ** 2).sum(-1) + 0.1 * torch.randn(theta.shape[:-1], generator=gen,
                                                                        dtype=theta.dtype)

    theta0 = torch.zeros(100, 4, dtype=torch.float64)
    gen = torch.Generator().manual_seed(9)
    if method == "kw":
        it = sa.kiefer_wolfowitz(f, theta0, 500, sa.power_step(0.5), sa.power_step(0.5, 1 / 3), generator=gen)
    else:
        it = sa.spsa(f, theta0, 2000, sa.power_step(0.3, 0.602, offset=5), sa.power_step(0.2, 0.101), generator=gen)
    err0 = float(((theta0 - theta_star) ** 2).sum(-1).mean())
    err = float(((it[-1] - theta_star) ** 2).sum(-1).mean())
    assert err < err0 / 100


# --- Polyak averaging --------------------------------------------------------------

def polyak_exact_n_mse(n, gamma=0.6):
    """E(theta_bar_n)^2 * n for theta_k = (1-g_k) theta_{k-1} - g_k xi_k, by tracking each xi's weight."""
    g = np.arange(1, n + 1) ** -gamma
    weights = np.zeros(n)  # weight of xi_j in the current iterate
    total = np.zeros(n)
    for k in range(n):
        weights *= 1 - g[k]
        weights[k] = -g[k]
        total += weights
    return n * float(((total / n) ** 2).sum()), n**gamma * float((weights**2).sum())


def test_polyak_average_is_the_running_mean_of_iterates():
    it = torch.randn(30, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    torch.testing.assert_close(sa.polyak_average(it), it.cumsum(0) / torch.arange(1, 31).view(-1, 1), rtol=0,
                               atol=1e-12)


def test_polyak_averaging_reaches_the_optimal_rate():
    n, runs = 2000, 20_000
    exact_avg, exact_last = polyak_exact_n_mse(n)
    # references/fundamentals.md quotes ~1.06 and ~0.53; the exact weights give
    # 1.026 and 0.510, both close to the limits 1 and 1/2.
    assert exact_avg == pytest.approx(1.0, abs=0.1)
    assert exact_last == pytest.approx(0.5, abs=0.05)
    it = sa.robbins_monro(gaussian_observer(1.0), torch.ones(runs, dtype=torch.float64), n,
                          sa.power_step(1.0, 0.6), generator=torch.Generator().manual_seed(12))
    mc_avg = n * float((sa.polyak_average(it[1:])[-1] ** 2).mean())
    mc_last = n**0.6 * float((it[-1] ** 2).mean())
    se = math.sqrt(2 / runs)
    assert abs(mc_avg / exact_avg - 1) < 5 * se
    assert abs(mc_last / exact_last - 1) < 5 * se
