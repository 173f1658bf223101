r"""Note 9: DDPM's N fixed steps as the discretisation of the VP SDE dx = −½β(t)x dt + √β(t) dw.

DDPM's chain x_i = √(1 − β_i) x_{i−1} + √β_i z with β_i = β(t_i)/N has
√ᾱ_N = Π_i √(1 − β_i), a Riemann product of exp(−½ ∫ β): as N → ∞ it tends to the
SDE's mean coefficient exp(−¼(β_max − β_min) − ½β_min) = 0.006572 at t = 1 (0.006353 at
N = 1000 with score_sde's β_i = linspace(β_min/N, β_max/N, N)). An ε-network trained on
DDPM's discrete loss is then also a score model of the SDE, s(x, t) = −ε(x, 999t)/σ(t).

Measured here:

* closed forms: √ᾱ_N over N from 25 to 10⁵ against the continuous value; the N = 1000
  value against the reference 0.006353 (to its last digit), the gap's monotone decrease and
  its order of convergence (slope of log|gap| against log N; first order expected);
* one ε-network per seed, trained by fit() on DDPM's ε-loss (8 gaussians), sampled by DDPM's
  ancestral steps (N = 1000) and by the VP SDE's reverse Euler–Maruyama solver (1000 steps):
  the sliced Wasserstein distance between the two sample sets against the same distance
  between two independent data samples of that size (claim "matching statistics": within
  1.5× that floor, the bound of note 3; 95% interval over seeds), with their means,
  covariances and mode weights side by side.
"""
from __future__ import annotations


import numpy as np
import torch

from .base import Check, Context, NoteExperiment, Part, Result, Table
from .parallel import Plan, run_plans
from .stats import mean_ci

__all__ = ["SDEIntro", "alpha_bar_table", "convergence_order", "two_samplers", "BOUND", "REFERENCE_SQRT_ALPHA_BAR"]

REFERENCE_SQRT_ALPHA_BAR = 0.006353  # references/score_sde.md: the discrete product at N = 1000
BOUND = 1.5  # as note 3: within 1.5x of the noise floor
NS = (25, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 100_000)
TOY = "8gaussians"


def alpha_bar_table(ns=NS, beta_min: float = 0.1, beta_max: float = 20.0) -> dict:
    """{"N": [...], "discrete": √ᾱ_N per N (DDPM's product), "continuous": the VP SDE's mean coefficient at t=1}."""
    from ..diffusion.ddpm import DDPM
    from ..diffusion.sde import VPSDE

    discrete = [float(DDPM(beta_min, beta_max, N=n).sqrt_alpha_bars[-1]) for n in ns]
    mean_coef = VPSDE(beta_min, beta_max).marginal_prob(torch.ones(1, 1, dtype=torch.float64), 1.0)[0]
    return {"N": list(ns), "discrete": discrete, "continuous": float(mean_coef.reshape(-1)[0])}


def convergence_order(ns, gaps) -> float:
    """−slope of log|gap| against log N: 1 for a first-order discretisation."""
    return float(-np.polyfit(np.log(np.asarray(ns, float)), np.log(np.abs(np.asarray(gaps, float))), 1)[0])


def two_samplers(store, seed: int, steps: int, n_train: int, n: int, floor_draws: int, data_seed: int) -> dict:
    """Trains (or loads) a VP ε-network on DDPM's loss and samples it both ways."""
    from ..diffusion.data import toy_data, toy_mixture
    from ..diffusion.ddpm import DDPM
    from ..diffusion.metrics import mode_weights, sliced_wasserstein
    from ..diffusion.samplers import sample
    from ..diffusion.train import ScoreTraining, make_sde, trained_score_model

    data = toy_data(TOY, n_train, generator=torch.Generator().manual_seed(data_seed))
    cfg = ScoreTraining(objective="ddpm", steps=steps, batch_size=256, lr=2e-3, warmup=min(100, steps // 10),
                        schedule="cosine", ema_decay=0.995)
    sde = make_sde("vp")
    hits = store.hits
    model, info = trained_score_model(store, f"ddpm-eps-{TOY}", sde, data, cfg, seed, hidden=128)
    model.eval()
    with torch.no_grad():
        ddpm = DDPM(N=1000).sample(model.eps, (n, 2), generator=torch.Generator().manual_seed(seed + 1)).x
        sde_x = sample(sde, model, (n, 2), method="euler_maruyama", steps=1000,
                       generator=torch.Generator().manual_seed(seed + 2)).x
        rd_x = sample(sde, model, (n, 2), method="reverse_diffusion", steps=1000,
                      generator=torch.Generator().manual_seed(seed + 3)).x

    def sw(a, b):
        return float(sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(1)))

    fresh = [toy_data(TOY, n, generator=torch.Generator().manual_seed(data_seed + 100 + k))
             for k in range(2 * floor_draws)]
    floor = float(np.mean([sw(fresh[2 * k], fresh[2 * k + 1]) for k in range(floor_draws)]))
    means = toy_mixture(TOY).means

    def stats(x):
        return {"mean": x.mean(0).tolist(), "cov": torch.cov(x.T).reshape(-1).tolist(),
                "modes": mode_weights(x, means).tolist()}

    return {"seed": seed, "loaded": store.hits > hits, "final_loss": info.get("final_loss"), "floor": floor,
            "sw_ddpm_sde": sw(ddpm, sde_x), "sw_ddpm_rd": sw(ddpm, rd_x), "sw_ddpm_data": sw(ddpm, fresh[0]),
            "sw_sde_data": sw(sde_x, fresh[0]), "ddpm": stats(ddpm), "sde": stats(sde_x), "data": stats(fresh[0]),
            "ddpm_x": ddpm[:500].tolist(), "sde_x": sde_x[:500].tolist()}


# --- the parts ---------------------------------------------------------------------------------------

def alpha_bar_part() -> Part:
    table = alpha_bar_table()
    cont = table["continuous"]
    gaps = [d - cont for d in table["discrete"]]
    at_1000 = table["discrete"][table["N"].index(1000)]
    increases = sum(abs(b) > abs(a) for a, b in zip(gaps, gaps[1:]))
    order = convergence_order(table["N"], gaps)
    metrics = {"sqrt_alpha_bar_1000": at_1000, "sqrt_alpha_bar_continuous": cont, "gap_at_1e5": gaps[-1],
               "gap_increases": increases, "convergence_order": order}
    checks = [
        Check("DDPM's √ᾱ_N at N = 1000: |ours − 0.006353| (the reference's last digit: 5e-7)",
              abs(at_1000 - REFERENCE_SQRT_ALPHA_BAR), "<=", 5e-7, label="√ᾱ_1000 − 0.006353"),
        Check("|√ᾱ_N − continuous| never grows with N over 25 … 10⁵ (count of increases)", increases, "<=", 0,
              label="gap increases"),
        Check("order of convergence of √ᾱ_N to the SDE's 0.006572 (−slope of log|gap| vs log N) >= 0.9",
              order, ">=", 0.9, label="convergence order"),
    ]
    rows = [[n, f"{d:.7f}", f"{d - cont:+.2e}"] for n, d in zip(table["N"], table["discrete"])]
    return Part(metrics, checks, [Table(f"√ᾱ_N of DDPM's chain against the VP SDE's {cont:.7f}",
                                        ["N", "√ᾱ_N", "gap"], rows)], data=table)


def samplers_plan(ctx: Context, n_seeds: int, steps: int, n_train: int, n: int, floor_draws: int) -> Plan:
    counts = ctx.artifacts.counts()

    def finish(out: list) -> Part:
        ctx.artifacts.add_counts(counts, [r["loaded"] for r in out])
        ratio = mean_ci([r["sw_ddpm_sde"] / r["floor"] for r in out], statistic="SW2(DDPM, VP SDE) / noise floor")
        rd = mean_ci([r["sw_ddpm_rd"] / r["floor"] for r in out], statistic="SW2(DDPM, reverse diffusion) / floor")
        check = Check.ci_below(f"one ε-network: SW2 between its DDPM-ancestral and VP-SDE (Euler–Maruyama) samples / "
                               f"the same between two data samples (95% CI over seeds) <= {BOUND}", ratio, BOUND,
                               label="SW2(DDPM, SDE)/floor CI high")
        metrics = {"sw_ddpm_sde_ratio": ratio.mean, "sw_ddpm_sde_ratio_ci_high": ratio.high,
                   "sw_ddpm_reverse_diffusion_ratio": rd.mean, "samples_per_sampler": n,
                   "sw_ddpm_data_ratio": float(np.mean([r["sw_ddpm_data"] / r["floor"] for r in out])),
                   "sw_sde_data_ratio": float(np.mean([r["sw_sde_data"] / r["floor"] for r in out]))}
        rows = []
        for r in out:
            for name in ("ddpm", "sde", "data"):
                s = r[name]
                rows.append([r["seed"], {"ddpm": "DDPM ancestral", "sde": "VP SDE (EM)", "data": "data"}[name],
                             "(" + ", ".join(f"{v:+.3f}" for v in s["mean"]) + ")",
                             "(" + ", ".join(f"{v:.3f}" for v in s["cov"]) + ")",
                             " ".join(f"{w:.3f}" for w in s["modes"])])
        tables = [Table(f"Sample statistics of {n} samples per sampler (one ε-network per seed) and of fresh data",
                        ["seed", "sampler", "mean", "covariance (xx, xy, yx, yy)", "mode weights (8 modes)"], rows)]
        return Part(metrics, [check], tables, data={"out": out})

    return Plan([(two_samplers, (ctx.artifacts, ctx.seed + 1000 * k, steps, n_train, n, floor_draws, ctx.seed + 7))
                 for k in range(n_seeds)], finish)


# --- plots -------------------------------------------------------------------------------------------

def plot_alpha_bar(ctx: Context, part: Part) -> None:
    import matplotlib.pyplot as plt

    t = part.data
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    a.plot(t["N"], t["discrete"], "o-", label="DDPM: Π √(1 − β_i)")
    a.axhline(t["continuous"], color="k", ls="--", label=f"VP SDE: {t['continuous']:.6f}")
    a.set(xscale="log", xlabel="steps N", ylabel="√ᾱ_N", title="DDPM's signal coefficient at the last step")
    a.legend(fontsize=8)
    gaps = np.abs(np.asarray(t["discrete"]) - t["continuous"])
    b.loglog(t["N"], gaps, "o-", label="|gap|")
    b.loglog(t["N"], gaps[0] * t["N"][0] / np.asarray(t["N"], float), "k:", label="∝ 1/N")
    b.set(xlabel="steps N", ylabel="|√ᾱ_N − continuous|", title="first-order convergence")
    b.legend(fontsize=8)
    ctx.save_figure(fig, "alpha-bar", "score_sde's β_i = linspace(β_min/N, β_max/N, N), β_min 0.1, β_max 20.")


def plot_samples(ctx: Context, part: Part) -> None:
    import matplotlib.pyplot as plt

    r = part.data["out"][0]
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.6), constrained_layout=True)
    for ax, (title, x) in zip(axes, (("DDPM ancestral, N = 1000", r["ddpm_x"]), ("VP SDE reverse (EM, 1000)", r["sde_x"]))):
        x = np.asarray(x)
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5)
        ax.set(xlim=(-4.5, 4.5), ylim=(-4.5, 4.5), title=title)
        ax.set_aspect("equal")
    ctx.save_figure(fig, "samples", f"One ε-network (seed {r['seed']}), 500 samples from each sampler.")


class SDEIntro(NoteExperiment):
    slug = "sde-intro"

    def measure(self, ctx: Context) -> Result:
        (samplers,) = run_plans([samplers_plan(ctx, n_seeds=ctx.pick(3, 5, tiny=2), steps=ctx.pick(2000, 6000, tiny=20),
                                               n_train=ctx.pick(10000, 20000, tiny=512), n=ctx.pick(1500, 3000, tiny=64),
                                               floor_draws=ctx.pick(3, 5, tiny=1))],
                                workers=ctx.pick(None, None, tiny=1))
        alpha = alpha_bar_part()
        ctx.progress(0.9, "plots")
        plot_alpha_bar(ctx, alpha)
        plot_samples(ctx, samplers)
        m = {**alpha.metrics, **samplers.metrics}
        summary = (f"√ᾱ_1000 = {m['sqrt_alpha_bar_1000']:.6f} against the SDE's {m['sqrt_alpha_bar_continuous']:.6f}, "
                   f"order {m['convergence_order']:.2f}; DDPM vs VP-SDE samples of one ε-network: SW2 "
                   f"{m['sw_ddpm_sde_ratio']:.2f}x the data's noise floor.")
        return Result(metrics=m, checks=alpha.checks + samplers.checks, tables=alpha.tables + samplers.tables,
                      summary=summary)
