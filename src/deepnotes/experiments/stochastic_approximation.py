"""Note 5: stochastic approximation.

Every part of the claim is measured by Monte Carlo over independent runs, side
by side in one batch, and compared with the closed form it should reach. Each
part is a pure function below returning its metrics and checks;
``StochasticApproximation.measure`` composes them:

* ``running_mean_parity``: running mean vs the batch mean of every prefix
  (float64, 1e-12);
* ``running_mean_mse``: MSE of the running mean vs sigma^2/n (within 4
  Monte-Carlo standard errors);
* ``robbins_monro_rates``: Robbins-Monro with a/n steps on
  N(theta) = M'(theta - theta*) + sigma*xi: n*Var at the last step vs
  a^2 sigma^2 / (2aM' - 1) (within 5%, the tolerance references/fundamentals.md
  gives), and for aM' < 1/2 the growth exponent of n*Var, 1 - 2aM' (within 0.1);
* ``zero_order``: Kiefer-Wolfowitz and SPSA on a noisy quadratic: the squared
  distance to the minimiser must shrink at least 100-fold;
* ``polyak``: Polyak averaging with n^-0.6 steps: n*MSE at the last step within
  10% of the optimal sigma^2/M'^2.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..optim import sa
from .base import Check, Context, NoteExperiment, Result, Table

__all__ = ["StochasticApproximation", "rm_nvar_limit", "growth_exponent", "running_mean_parity",
           "log_grid", "running_mean_mse", "robbins_monro_rates", "zero_order", "polyak"]

SIGMA = 1.0  # observation noise
THETA_STAR = 0.0  # the root, so errors are the iterates themselves
CHUNK = 5000  # runs simulated at once, to bound memory at (n_steps + 1) x CHUNK float64
RM_CASES = [(2.0, 1.0), (1.0, 0.75), (0.25, 1.0)]  # (a, M'): two with aM' > 1/2, one below


def rm_nvar_limit(a: float, slope: float, sigma: float = SIGMA) -> float:
    """lim n*Var of Robbins-Monro with a/n steps: a^2 sigma^2 / (2aM' - 1) for aM' > 1/2, else inf."""
    return a**2 * sigma**2 / (2 * a * slope - 1) if a * slope > 0.5 else math.inf


def growth_exponent(n, y) -> float:
    """Least-squares slope of log y against log n: the exponent p of y = c n^p."""
    return float(np.polyfit(np.log(np.asarray(n, dtype=float)), np.log(np.asarray(y, dtype=float)), 1)[0])


def log_grid(first: int, last: int, points: int) -> np.ndarray:
    """About `points` integers from first to last (both included), evenly spaced in log n."""
    return np.unique(np.rint(np.logspace(math.log10(first), math.log10(last), points)).astype(int))


def _chunks(runs: int):
    """Sizes of the batches of at most CHUNK runs that make up `runs`."""
    return [min(CHUNK, runs - done) for done in range(0, runs, CHUNK)]


def _linear_observer(slope: float):
    def observe(theta: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        noise = torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
        return slope * (theta - THETA_STAR) + SIGMA * noise

    return observe


# --- 1, 2. the incremental mean ---------------------------------------------------------------------------

def running_mean_parity(n: int, generator: torch.Generator):
    """max |incremental - batch mean| over the n prefixes of one float64 stream -> (metrics, checks)."""
    x = torch.randn(n, generator=generator, dtype=torch.float64) * SIGMA + 3.0
    batch = torch.stack([x[: k + 1].mean() for k in range(n)])
    diff = float((sa.running_mean(x) - batch).abs().max())
    check = Check("incremental mean == batch mean of every prefix (max abs diff)", diff, "<=", 1e-12,
                  label="incremental = batch mean")
    return {"running_mean_max_abs_diff": diff}, [check]


def running_mean_mse(n: int, runs: int, generator: torch.Generator):
    """Monte-Carlo MSE of the running mean on a log grid of n -> (metrics, checks, (grid, mse))."""
    grid = log_grid(1, n, 25)
    sq = np.zeros(len(grid))
    for m in _chunks(runs):
        xs = torch.randn(n, m, generator=generator, dtype=torch.float64) * SIGMA  # (n, runs)
        sq += (sa.running_mean(xs)[grid - 1] ** 2).sum(dim=1).numpy()
    mse = sq / runs
    se = math.sqrt(2 / (runs - 1))  # relative standard error of a Gaussian variance estimate
    dev = float(np.abs(mse * grid / SIGMA**2 - 1).max())
    check = Check("running-mean MSE == sigma^2/n (max relative deviation, bound 4 MC s.e.)", dev, "<=", 4 * se,
                  label="running-mean n*MSE")
    return {"running_mean_max_rel_dev_n_mse": dev}, [check], (grid, mse)


# --- 3. Robbins-Monro rates -------------------------------------------------------------------------------

def _rm_mse(a: float, slope: float, n_steps: int, runs: int, grid: np.ndarray, generator) -> np.ndarray:
    """Monte-Carlo E(theta_n - theta*)^2 at the grid, theta_0 - theta* = 1."""
    total = np.zeros(len(grid))
    for m in _chunks(runs):
        theta0 = torch.full((m,), THETA_STAR + 1.0, dtype=torch.float64)
        it = sa.robbins_monro(_linear_observer(slope), theta0, n_steps, sa.power_step(a), generator=generator)
        total += ((it[grid] - THETA_STAR) ** 2).sum(dim=1).numpy()
    return total / runs


def robbins_monro_rates(n_steps: int, runs: int, generator: torch.Generator,
                        progress=lambda fraction, message="": None):
    """n*Var of a/n Robbins-Monro: Monte Carlo vs the exact recursion and the limit.

    Returns (metrics, checks, table, (grid, {(a, M'): Monte-Carlo MSE on the grid})).
    """
    grid = log_grid(10, n_steps, 13)
    rows, curves = [], {}
    for t, (a, slope) in enumerate(RM_CASES):
        # The slow case is checked on an exponent with a loose bound, so fewer runs do.
        curves[(a, slope)] = _rm_mse(a, slope, n_steps, runs if a * slope > 0.5 else max(runs // 5, 2), grid,
                                     generator)
        exact = sa.rm_variance_recursion(a, slope, SIGMA, n_steps, v0=1.0)
        rows.append([a, slope, rm_nvar_limit(a, slope), n_steps * float(exact[n_steps]),
                     n_steps * curves[(a, slope)][-1]])
        progress((t + 1) / len(RM_CASES), f"Robbins-Monro a={a}, M'={slope}")
    metrics, checks = {}, []
    for a, slope, limit, _, mc in rows[:2]:
        key = f"rm_a{a:g}_m{slope:g}_nvar"
        metrics[key], metrics[key + "_limit"] = mc, limit
        checks.append(Check(f"RM a={a:g}, M'={slope:g}: |n*Var/limit - 1| at n={n_steps} (limit {limit:.4g})",
                            abs(mc / limit - 1), "<=", 0.05, label=f"RM a={a:g} n*Var"))
    a, slope = RM_CASES[2]
    late = grid >= 100
    exponent = growth_exponent(grid[late], grid[late] * curves[(a, slope)][late])
    metrics[f"rm_a{a:g}_growth_exponent"] = exponent
    checks.append(Check(f"RM a={a:g} (aM' < 1/2): |growth exponent of n*Var - (1 - 2aM')|",
                        abs(exponent - (1 - 2 * a * slope)), "<=", 0.1, label=f"RM a={a:g} exponent"))
    table = Table(f"Robbins-Monro n*Var at n = {n_steps} (theta_0 - theta* = 1, sigma = 1)",
                  ["a", "M'", "limit a^2 s^2/(2aM'-1)", "exact recursion", "Monte Carlo"],
                  [[f"{a:g}", f"{m:g}", "inf (slower rate)" if math.isinf(lim) else f"{lim:.4f}", f"{ex:.4f}",
                    f"{mc:.4f}"] for a, m, lim, ex, mc in rows])
    return metrics, checks, table, (grid, curves)


# --- 4. zero-order methods --------------------------------------------------------------------------------

def zero_order(p: int, runs: int, n_evals: int, generator: torch.Generator):
    """Kiefer-Wolfowitz and SPSA on 0.5 sum h (theta - theta*)^2 + 0.1 xi, from 2 n_evals noisy values.

    Returns (metrics, checks, (kw, spsa) mean squared error per step).
    """
    h = torch.linspace(0.5, 2.0, p, dtype=torch.float64)  # curvatures
    theta_star = torch.linspace(-1.0, 1.0, p, dtype=torch.float64)

    def noisy_quadratic(theta, gen):
        noise = torch.randn(theta.shape[:-1], generator=gen, dtype=theta.dtype)
        return 0.5 * (h * (theta - theta_star) ** 2).sum(-1) + 0.1 * noise

    theta0 = torch.zeros(runs, p, dtype=torch.float64)
    kw = sa.kiefer_wolfowitz(noisy_quadratic, theta0, n_evals // p, sa.power_step(1.0), sa.power_step(0.5, 1 / 3),
                             generator=generator)
    sp = sa.spsa(noisy_quadratic, theta0, n_evals, sa.power_step(0.5, 0.602, offset=5), sa.power_step(0.2, 0.101),
                 generator=generator)
    err0 = float(((theta0 - theta_star) ** 2).sum(-1).mean())
    kw_err = ((kw - theta_star) ** 2).sum(-1).mean(-1).numpy()  # (steps + 1,)
    sp_err = ((sp - theta_star) ** 2).sum(-1).mean(-1).numpy()
    metrics = {"kw_error_reduction": err0 / float(kw_err[-1]), "spsa_error_reduction": err0 / float(sp_err[-1]),
               "function_evaluations": 2 * n_evals}
    checks = [
        Check(f"Kiefer-Wolfowitz: ||theta-theta*||^2 shrinks (factor, {2 * n_evals} evaluations)",
              metrics["kw_error_reduction"], ">=", 100, label="Kiefer-Wolfowitz shrink"),
        Check(f"SPSA: ||theta-theta*||^2 shrinks (factor, {2 * n_evals} evaluations)",
              metrics["spsa_error_reduction"], ">=", 100, label="SPSA shrink"),
    ]
    return metrics, checks, (kw_err, sp_err)


# --- 5. Polyak averaging ----------------------------------------------------------------------------------

def polyak(n: int, runs: int, generator: torch.Generator):
    """n*MSE of the averaged and the last iterate of n^-0.6 Robbins-Monro -> (metrics, checks, curves)."""
    grid = log_grid(10, n, 12)
    avg_sq, last_sq = np.zeros(len(grid)), np.zeros(len(grid))
    for m in _chunks(runs):
        theta0 = torch.full((m,), THETA_STAR + 1.0, dtype=torch.float64)
        it = sa.robbins_monro(_linear_observer(1.0), theta0, n, sa.power_step(1.0, 0.6), generator=generator)
        avg = sa.polyak_average(it[1:])
        avg_sq += ((avg[grid - 1] - THETA_STAR) ** 2).sum(1).numpy()
        last_sq += ((it[grid] - THETA_STAR) ** 2).sum(1).numpy()
    n_mse_avg, n_mse_last = grid * avg_sq / runs, grid * last_sq / runs
    metrics = {"polyak_n_mse": float(n_mse_avg[-1]), "last_iterate_n_mse": float(n_mse_last[-1])}
    check = Check(f"Polyak average, n^-0.6 steps: |n*MSE - sigma^2/M'^2| at n={n}", abs(n_mse_avg[-1] - 1.0),
                  "<=", 0.1, label="Polyak n*MSE")
    return metrics, [check], (grid, n_mse_avg, n_mse_last)


# --- figures ----------------------------------------------------------------------------------------------

def plot_mse(ctx: Context, grid, mse, runs: int) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.loglog(grid, mse, "o", ms=4, label="Monte Carlo MSE")
    ax.loglog(grid, SIGMA**2 / grid, "-", label=r"$\sigma^2/n$")
    ax.set(xlabel="n", ylabel="MSE", title="Running mean: MSE vs n")
    ax.legend()
    ctx.save_figure(fig, "mse-vs-n", f"MSE of the incremental mean over {runs} runs against sigma^2/n.")


def plot_rm_rates(ctx: Context, n_steps: int, grid, curves) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    n_all = np.arange(1, n_steps + 1)
    for a, slope in [(4.0, 1.0), (2.0, 1.0), (1.0, 1.0), (1.0, 0.75), (0.5, 1.0), (0.25, 1.0)]:
        exact = sa.rm_variance_recursion(a, slope, SIGMA, n_steps, v0=1.0).numpy()[1:]
        (line,) = ax.loglog(n_all, n_all * exact, "-", lw=1.2, label=f"a={a:g}, M'={slope:g}")
        if (a, slope) in curves:
            ax.loglog(grid, grid * curves[(a, slope)], "o", ms=4, color=line.get_color())
    ax.set(xlabel="n", ylabel=r"$n \cdot E(\theta_n-\theta^*)^2$",
           title="Robbins-Monro, a/n steps (lines exact, dots Monte Carlo)")
    ax.legend(fontsize=7, ncol=2)
    ctx.save_figure(fig, "rm-rates", "n*Var of Robbins-Monro iterates: exact recursion and Monte Carlo.")


def plot_zero_order(ctx: Context, p: int, runs: int, kw_err, sp_err) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.loglog(2 * p * np.arange(len(kw_err))[1:], kw_err[1:], label=f"Kiefer-Wolfowitz (2p={2 * p} evals/step)")
    ax.loglog(2 * np.arange(len(sp_err))[1:], sp_err[1:], label="SPSA (2 evals/step)")
    ax.set(xlabel="noisy function evaluations", ylabel=r"mean $\|\theta-\theta^*\|^2$", title=f"Noisy quadratic, p={p}")
    ax.legend()
    ctx.save_figure(fig, "kw-spsa", f"Zero-order minimisation of a noisy quadratic, mean over {runs} runs.")


def plot_polyak(ctx: Context, grid, n_mse_avg, n_mse_last) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.semilogx(grid, n_mse_avg, "o-", label="Polyak average")
    ax.semilogx(grid, n_mse_last, "s-", label="last iterate")
    ax.axhline(1.0, color="k", ls=":", label=r"optimal $\sigma^2/M'^2$")
    ax.set(xlabel="n", ylabel=r"$n \cdot$ MSE", title=r"Steps $n^{-0.6}$: averaging vs last iterate")
    ax.legend()
    ctx.save_figure(fig, "polyak", "n*MSE of the averaged and the last iterate.")


class StochasticApproximation(NoteExperiment):
    slug = "stochastic-approximation"

    def measure(self, ctx: Context) -> Result:
        runs = ctx.pick(10_000, 40_000, tiny=200)
        n_mean = ctx.pick(1_000, 10_000, tiny=100)
        n_rm = ctx.pick(10_000, 10_000, tiny=1_000)
        p, zo_runs, n_zo = 5, ctx.pick(200, 1000, tiny=20), ctx.pick(2000, 10_000, tiny=200)
        n_pa = ctx.pick(2000, 2000, tiny=200)
        metrics, checks = {"runs": runs}, []

        m, c = running_mean_parity(n_mean, ctx.generator(1))
        metrics.update(m)
        checks += c
        m, c, (grid, mse) = running_mean_mse(n_mean, runs, ctx.generator(2))
        metrics.update(m)
        checks += c
        ctx.progress(0.25, "running-mean MSE")

        m, c, table, (rm_grid, curves) = robbins_monro_rates(n_rm, runs, ctx.generator(3),
                                                             lambda f, msg: ctx.progress(0.25 + 0.4 * f, msg))
        metrics.update(m)
        checks += c
        m, c, (kw_err, sp_err) = zero_order(p, zo_runs, n_zo, ctx.generator(4))
        metrics.update(m)
        checks += c
        ctx.progress(0.85, "Kiefer-Wolfowitz and SPSA")
        m, c, (pa_grid, n_mse_avg, n_mse_last) = polyak(n_pa, runs, ctx.generator(5))
        metrics.update(m)
        checks += c

        plot_mse(ctx, grid, mse, runs)
        plot_rm_rates(ctx, n_rm, rm_grid, curves)
        plot_zero_order(ctx, p, zo_runs, kw_err, sp_err)
        plot_polyak(ctx, pa_grid, n_mse_avg, n_mse_last)
        ctx.progress(1.0, "Polyak averaging")
        (a1, m1), (a2, m2) = RM_CASES[:2]
        return Result(
            metrics=metrics, checks=checks, tables=[table],
            summary=(f"Monte Carlo over {runs} independent runs per case; Robbins-Monro n*Var "
                     f"{metrics[f'rm_a{a1:g}_m{m1:g}_nvar']:.4f} (limit {rm_nvar_limit(a1, m1):.4g}) and "
                     f"{metrics[f'rm_a{a2:g}_m{m2:g}_nvar']:.4f} (limit {rm_nvar_limit(a2, m2):.4g}); Polyak n*MSE "
                     f"{metrics['polyak_n_mse']:.3f} vs last iterate {metrics['last_iterate_n_mse']:.2f}."),
        )
