"""Note 5: stochastic approximation.

Every part of the claim is measured by Monte Carlo over independent runs, side
by side in one batch, and compared with the closed form it should reach:

* running mean vs the batch mean of every prefix (float64, 1e-12);
* MSE of the running mean vs sigma^2/n (within 4 Monte-Carlo standard errors);
* Robbins-Monro with a/n steps on N(theta) = M'(theta - theta*) + sigma*xi:
  n*Var at n = 10^4 vs a^2 sigma^2 / (2aM' - 1) (within 5%, the tolerance
  references/fundamentals.md gives), and for aM' < 1/2 the growth exponent of
  n*Var, 1 - 2aM' (within 0.1);
* Kiefer-Wolfowitz and SPSA on a noisy quadratic: the squared distance to the
  minimiser must shrink at least 100-fold;
* Polyak averaging with n^-0.6 steps: n*MSE at n = 2000 within 10% of the
  optimal sigma^2/M'^2.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..optim import sa
from .base import Check, Context, NoteExperiment, Result, Table

__all__ = ["StochasticApproximation"]

SIGMA = 1.0  # observation noise
THETA_STAR = 0.0  # the root, so errors are the iterates themselves
CHUNK = 5000  # runs simulated at once, to bound memory at (n_steps + 1) x CHUNK float64


def _linear_observer(slope: float):
    def observe(theta: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        noise = torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
        return slope * (theta - THETA_STAR) + SIGMA * noise

    return observe


def _rm_mse(a: float, slope: float, n_steps: int, runs: int, grid: np.ndarray, generator) -> np.ndarray:
    """Monte-Carlo E(theta_n - theta*)^2 at the grid, theta_0 - theta* = 1."""
    total = np.zeros(len(grid))
    done = 0
    while done < runs:
        m = min(CHUNK, runs - done)
        theta0 = torch.full((m,), THETA_STAR + 1.0, dtype=torch.float64)
        it = sa.robbins_monro(_linear_observer(slope), theta0, n_steps, sa.power_step(a), generator=generator)
        total += ((it[grid] - THETA_STAR) ** 2).sum(dim=1).numpy()
        done += m
    return total / runs


class StochasticApproximation(NoteExperiment):
    slug = "stochastic-approximation"

    def measure(self, ctx: Context) -> Result:
        import matplotlib.pyplot as plt

        gen = ctx.generator()
        runs = ctx.pick(10_000, 40_000)
        metrics: dict[str, float] = {"runs": runs}
        checks: list[Check] = []

        # 1. The incremental mean is the batch mean of every prefix.
        n_mean = ctx.pick(1_000, 10_000)
        x = torch.randn(n_mean, generator=gen, dtype=torch.float64) * SIGMA + 3.0
        incremental = sa.running_mean(x)
        batch = torch.stack([x[: n + 1].mean() for n in range(n_mean)])
        metrics["running_mean_max_abs_diff"] = float((incremental - batch).abs().max())
        checks.append(Check("incremental mean == batch mean of every prefix (max abs diff)",
                            metrics["running_mean_max_abs_diff"], "<=", 1e-12))
        ctx.progress(0.1, "running mean")

        # 2. Its MSE is sigma^2 / n.
        grid = np.unique(np.logspace(0, math.log10(n_mean), 25).astype(int))
        sq = np.zeros(len(grid))
        done = 0
        while done < runs:
            m = min(CHUNK, runs - done)
            xs = torch.randn(n_mean, m, generator=gen, dtype=torch.float64) * SIGMA
            sq += (sa.running_mean(xs)[grid - 1] ** 2).sum(dim=1).numpy()
            done += m
        mse = sq / runs
        ratio = mse * grid / SIGMA**2
        se = math.sqrt(2 / (runs - 1))  # relative standard error of a Gaussian variance estimate
        metrics["running_mean_max_rel_dev_n_mse"] = float(np.abs(ratio - 1).max())
        checks.append(Check("running-mean MSE == sigma^2/n (max relative deviation, bound 4 MC s.e.)",
                            metrics["running_mean_max_rel_dev_n_mse"], "<=", 4 * se))
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.loglog(grid, mse, "o", ms=4, label="Monte Carlo MSE")
        ax.loglog(grid, SIGMA**2 / grid, "-", label=r"$\sigma^2/n$")
        ax.set(xlabel="n", ylabel="MSE", title="Running mean: MSE vs n")
        ax.legend()
        ctx.save_figure(fig, "mse-vs-n", f"MSE of the incremental mean over {runs} runs against sigma^2/n.")
        ctx.progress(0.25, "running-mean MSE")

        # 3. Robbins-Monro with a/n steps: n*Var limits and the slow regime.
        n_rm = 10_000
        rm_grid = np.unique(np.logspace(1, 4, 13).astype(int))
        cases = [(2.0, 1.0), (1.0, 0.75), (0.25, 1.0)]
        rows = []
        mc_curves = {}
        for k, (a, slope) in enumerate(cases):
            # The slow case is checked on an exponent with a loose bound, so fewer runs do.
            mc = _rm_mse(a, slope, n_rm, runs if a * slope > 0.5 else runs // 5, rm_grid, gen)
            mc_curves[(a, slope)] = mc
            exact = sa.rm_variance_recursion(a, slope, SIGMA, n_rm, v0=1.0).numpy()
            limit = a**2 * SIGMA**2 / (2 * a * slope - 1) if a * slope > 0.5 else float("inf")
            rows.append([a, slope, limit, n_rm * exact[n_rm], n_rm * mc[-1]])
            ctx.progress(0.25 + 0.4 * (k + 1) / len(cases), f"Robbins-Monro a={a}, M'={slope}")
        for (a, slope), row in zip(cases[:2], rows[:2]):
            key = f"rm_a{a:g}_m{slope:g}_nvar"
            metrics[key] = row[4]
            metrics[key + "_limit"] = row[2]
            checks.append(Check(f"RM a={a:g}, M'={slope:g}: |n*Var/limit - 1| at n=1e4 (limit {row[2]:.4g})",
                                abs(row[4] / row[2] - 1), "<=", 0.05))
        slow = mc_curves[cases[2]]
        lo = rm_grid >= 100
        slope_fit = np.polyfit(np.log(rm_grid[lo]), np.log(rm_grid[lo] * slow[lo]), 1)[0]
        metrics["rm_a0.25_growth_exponent"] = float(slope_fit)
        checks.append(Check("RM a=0.25 (aM' < 1/2): |growth exponent of n*Var - (1 - 2aM')|",
                            abs(slope_fit - 0.5), "<=", 0.1))

        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        n_all = np.arange(1, n_rm + 1)
        for a, slope in [(4.0, 1.0), (2.0, 1.0), (1.0, 1.0), (1.0, 0.75), (0.5, 1.0), (0.25, 1.0)]:
            exact = sa.rm_variance_recursion(a, slope, SIGMA, n_rm, v0=1.0).numpy()[1:]
            (line,) = ax.loglog(n_all, n_all * exact, "-", lw=1.2, label=f"a={a:g}, M'={slope:g}")
            if (a, slope) in mc_curves:
                ax.loglog(rm_grid, rm_grid * mc_curves[(a, slope)], "o", ms=4, color=line.get_color())
        ax.set(xlabel="n", ylabel=r"$n \cdot E(\theta_n-\theta^*)^2$",
               title="Robbins-Monro, a/n steps (lines exact, dots Monte Carlo)")
        ax.legend(fontsize=7, ncol=2)
        ctx.save_figure(fig, "rm-rates", "n*Var of Robbins-Monro iterates: exact recursion and Monte Carlo.")

        # 4. Kiefer-Wolfowitz and SPSA on a noisy quadratic, from values alone.
        p = 5
        h = torch.linspace(0.5, 2.0, p, dtype=torch.float64)  # curvatures
        theta_star = torch.linspace(-1.0, 1.0, p, dtype=torch.float64)

        def noisy_quadratic(theta, generator):
            noise = torch.randn(theta.shape[:-1], generator=generator, dtype=theta.dtype)
            return 0.5 * (h * (theta - theta_star) ** 2).sum(-1) + 0.1 * noise

        zo_runs = ctx.pick(200, 1000)
        n_zo = ctx.pick(2000, 10_000)
        theta0 = torch.zeros(zo_runs, p, dtype=torch.float64)
        kw = sa.kiefer_wolfowitz(noisy_quadratic, theta0, n_zo // p, sa.power_step(1.0), sa.power_step(0.5, 1 / 3),
                                 generator=gen)
        sp = sa.spsa(noisy_quadratic, theta0, n_zo, sa.power_step(0.5, 0.602, offset=5), sa.power_step(0.2, 0.101),
                     generator=gen)
        err0 = float(((theta0 - theta_star) ** 2).sum(-1).mean())
        kw_err = ((kw - theta_star) ** 2).sum(-1).mean(-1).numpy()
        sp_err = ((sp - theta_star) ** 2).sum(-1).mean(-1).numpy()
        metrics["kw_error_reduction"] = err0 / float(kw_err[-1])
        metrics["spsa_error_reduction"] = err0 / float(sp_err[-1])
        metrics["function_evaluations"] = 2 * n_zo
        checks.append(Check(f"Kiefer-Wolfowitz: ||theta-theta*||^2 shrinks (factor, {2 * n_zo} evaluations)",
                            metrics["kw_error_reduction"], ">=", 100))
        checks.append(Check(f"SPSA: ||theta-theta*||^2 shrinks (factor, {2 * n_zo} evaluations)",
                            metrics["spsa_error_reduction"], ">=", 100))
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.loglog(2 * p * np.arange(len(kw_err))[1:], kw_err[1:], label=f"Kiefer-Wolfowitz (2p={2 * p} evals/step)")
        ax.loglog(2 * np.arange(len(sp_err))[1:], sp_err[1:], label="SPSA (2 evals/step)")
        ax.set(xlabel="noisy function evaluations", ylabel=r"mean $\|\theta-\theta^*\|^2$",
               title=f"Noisy quadratic, p={p}")
        ax.legend()
        ctx.save_figure(fig, "kw-spsa", f"Zero-order minimisation of a noisy quadratic, mean over {zo_runs} runs.")
        ctx.progress(0.85, "Kiefer-Wolfowitz and SPSA")

        # 5. Polyak averaging with n^-0.6 steps reaches n*MSE -> sigma^2/M'^2 = 1.
        n_pa = 2000
        pa_grid = np.unique(np.logspace(1, math.log10(n_pa), 12).astype(int))
        avg_sq = np.zeros(len(pa_grid))
        last_sq = np.zeros(len(pa_grid))
        done = 0
        while done < runs:
            m = min(CHUNK, runs - done)
            theta0 = torch.full((m,), THETA_STAR + 1.0, dtype=torch.float64)
            it = sa.robbins_monro(_linear_observer(1.0), theta0, n_pa, sa.power_step(1.0, 0.6), generator=gen)
            avg = sa.polyak_average(it[1:])
            avg_sq += ((avg[pa_grid - 1] - THETA_STAR) ** 2).sum(1).numpy()
            last_sq += ((it[pa_grid] - THETA_STAR) ** 2).sum(1).numpy()
            done += m
        n_mse_avg = pa_grid * avg_sq / runs
        n_mse_last = pa_grid * last_sq / runs
        metrics["polyak_n_mse"] = float(n_mse_avg[-1])
        metrics["last_iterate_n_mse"] = float(n_mse_last[-1])
        checks.append(Check("Polyak average, n^-0.6 steps: |n*MSE - sigma^2/M'^2| at n=2000",
                            abs(n_mse_avg[-1] - 1.0), "<=", 0.1))
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.semilogx(pa_grid, n_mse_avg, "o-", label="Polyak average")
        ax.semilogx(pa_grid, n_mse_last, "s-", label="last iterate")
        ax.axhline(1.0, color="k", ls=":", label=r"optimal $\sigma^2/M'^2$")
        ax.set(xlabel="n", ylabel=r"$n \cdot$ MSE", title=r"Steps $n^{-0.6}$: averaging vs last iterate")
        ax.legend()
        ctx.save_figure(fig, "polyak", "n*MSE of the averaged and the last iterate.")
        ctx.progress(1.0, "Polyak averaging")

        table = Table(
            "Robbins-Monro n*Var at n = 10^4 (theta_0 - theta* = 1, sigma = 1)",
            ["a", "M'", "limit a^2 s^2/(2aM'-1)", "exact recursion", "Monte Carlo"],
            [[f"{a:g}", f"{m:g}", "inf (slower rate)" if math.isinf(lim) else f"{lim:.4f}", f"{ex:.4f}", f"{mc:.4f}"]
             for a, m, lim, ex, mc in rows],
        )
        return Result(
            metrics=metrics,
            checks=checks,
            tables=[table],
            summary=(f"Monte Carlo over {runs} independent runs per case; Robbins-Monro n*Var "
                     f"{rows[0][4]:.4f} (limit 4/3) and {rows[1][4]:.4f} (limit 2); Polyak n*MSE "
                     f"{metrics['polyak_n_mse']:.3f} vs last iterate {metrics['last_iterate_n_mse']:.2f}."),
        )
