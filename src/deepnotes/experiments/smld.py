r"""Note 8: score matching and Langevin dynamics (NCSN, Song & Ermon 2019).

Langevin dynamics x ← x + δ ∇log p(x) + √(2δ) z samples p given only its score, but the
relative weights of well-separated modes are invisible to the score (it is local), so a chain
started uniformly stays in whichever mode it falls into. NCSN anneals: it follows the scores of
p convolved with N(0, σ_i² I) for a geometric σ_1 > … > σ_L, where the broad early levels
move mass between the modes in proportion to their weights.

Measured here, on NCSN's toy (0.8 N((5, 5), I) + 0.2 N((−5, −5), I), chains started uniform
on [−8, 8]², σ 20 → 1 over L = 10 levels, 100 steps each, NCSN's step 0.05·σ_i²/σ_L²):

* with the exact score: the heavy mode's share of the samples over seeds, annealed (claim
  0.78 ± 0.03: the 95% interval must lie within it) and plain Langevin on the data score
  (1000 steps of 0.05; claim ≈ 0.5: the interval's upper end below the annealed band);
* with learned scores: a noise-conditional network trained by NCSN's denoising score matching
  and one trained by sliced score matching (SSM-VR) on the same levels; each is scored by its
  σ²-weighted relative error against the exact noised score on noised data,
  Σ_i σ_i² E‖s_θ − s‖² / Σ_i σ_i² E‖s‖² (claim "learns the score": at most 0.1, i.e. 90% of
  the score's energy explained, 95% interval over seeds); annealed Langevin from each learned
  score is reported beside the exact one.
* at full scale, NCSN on sklearn digits (a U-Net, NCSNv2's σ_1 rule) gives a sample figure.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .base import Check, Context, NoteExperiment, Part, Result, Table
from .parallel import Plan, run_plans
from .stats import mean_ci

__all__ = ["SMLD", "exact_scores", "mass_run", "learned_run", "relative_score_error", "SIGMA_MAX", "SIGMA_MIN",
           "LEVELS", "STEP"]

SIGMA_MAX, SIGMA_MIN, LEVELS = 20.0, 1.0, 10  # NCSN's toy_runner
STEP = 0.05  # NCSN's toy lr 0.1 in the paper's x + lr/2·s convention
HEAVY_CLAIM, HEAVY_BAND = 0.78, 0.03
LEARNED_BOUND = 0.1


def _toy():
    from ..diffusion.data import toy_mixture

    return toy_mixture("ncsn", dtype=torch.float64).to_mixture()


def _ve():
    from ..diffusion.sde import VESDE

    return VESDE(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)


def exact_scores():
    """(noise-conditional score s(x, σ) of the toy blurred by σ, the data score s(x))."""
    from ..diffusion.sde import VPSDE

    mix, ve, vp = _toy(), _ve(), VPSDE()
    log_ratio = math.log(SIGMA_MAX / SIGMA_MIN)

    def conditional(x, sigma):  # VE's marginal std at t is σ(t) = σmin (σmax/σmin)^t
        t = (torch.log(torch.as_tensor(sigma, dtype=x.dtype)) - math.log(SIGMA_MIN)) / log_ratio
        return mix.score(x, t.clamp(0.0, 1.0).expand(x.shape[0]), ve)

    def data(x):  # VP at t = 0 has α = 1, σ = 0: the mixture itself
        return mix.score(x, 0.0, vp)

    return conditional, data


def _start(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 16 - 8


def heavy_share(x: torch.Tensor) -> float:
    from ..diffusion.metrics import mode_weights

    return float(mode_weights(x.double(), _toy().means)[0])


def mass_run(n: int, seed: int) -> dict:
    """Heavy-mode share of n chains, annealed and plain, with the exact score."""
    from ..diffusion.smld import annealed_langevin, geometric_sigmas, langevin

    conditional, data = exact_scores()
    g = torch.Generator().manual_seed(seed + 1)
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, LEVELS, dtype=torch.float64)
    annealed = annealed_langevin(conditional, _start(n, seed), sigmas, n_steps_each=100, step_lr=STEP, generator=g)
    plain = langevin(data, _start(n, seed), n_steps=100 * LEVELS, step_size=STEP, generator=g)
    return {"annealed": heavy_share(annealed.x), "plain": heavy_share(plain.x), "seed": seed,
            "annealed_x": annealed.x[:600].tolist(), "plain_x": plain.x[:600].tolist()}


def relative_score_error(score_fn, n: int, seed: int) -> float:
    """Σ_i σ_i² E‖s_θ(x̃, σ_i) − s(x̃, σ_i)‖² / Σ_i σ_i² E‖s(x̃, σ_i)‖² over x̃ = x + σ_i z, x from the toy."""
    from ..diffusion.smld import geometric_sigmas

    conditional, _ = exact_scores()
    g = torch.Generator().manual_seed(seed)
    x = _toy().sample(n, generator=g)
    num = den = 0.0
    for sigma in geometric_sigmas(SIGMA_MAX, SIGMA_MIN, LEVELS).tolist():
        noisy = x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)
        exact = conditional(noisy, sigma)
        with torch.no_grad():
            learned = score_fn(noisy.float(), torch.full((n,), sigma)).double()
        num += sigma**2 * float((learned - exact).square().sum(1).mean())
        den += sigma**2 * float(exact.square().sum(1).mean())
    return num / den


def learned_run(store, objective: str, seed: int, steps: int, n_train: int, n_eval: int, data_seed: int) -> dict:
    """Trains (or loads) a noise-conditional score by `objective` ("ncsn" | "ssm") and scores it."""
    from ..diffusion.data import toy_data
    from ..diffusion.smld import annealed_langevin, geometric_sigmas
    from ..diffusion.train import ScoreTraining, trained_score_model

    data = toy_data("ncsn", n_train, generator=torch.Generator().manual_seed(data_seed))
    cfg = ScoreTraining(objective=objective, steps=steps, batch_size=256, lr=2e-3, warmup=min(100, steps // 10),
                        schedule="cosine", ema_decay=0.99, n_levels=LEVELS)
    hits = store.hits
    model, info = trained_score_model(store, f"ncsn-toy-{objective}", _ve(), data, cfg, seed, hidden=64)
    model.eval()
    error = relative_score_error(model.score_at_sigma, n_eval, seed + 5)
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, LEVELS)
    with torch.no_grad():
        x = annealed_langevin(model.score_at_sigma, _start(n_eval, seed).float(), sigmas, n_steps_each=100,
                              step_lr=STEP, generator=torch.Generator().manual_seed(seed + 3)).x
    grid = torch.stack(torch.meshgrid(torch.linspace(-9, 9, 19), torch.linspace(-9, 9, 19), indexing="xy"), -1)
    with torch.no_grad():
        field = model.score_at_sigma(grid.reshape(-1, 2), torch.full((361,), SIGMA_MIN))
    return {"objective": objective, "seed": seed, "error": error, "heavy": heavy_share(x), "loaded": store.hits > hits,
            "final_loss": info.get("final_loss"), "field": field.tolist()}


# --- the parts ---------------------------------------------------------------------------------------

def mass_plan(ctx: Context, n: int, n_seeds: int) -> Plan:
    def finish(out: list) -> Part:
        annealed = mean_ci([r["annealed"] for r in out], statistic="heavy-mode share, annealed")
        plain = mean_ci([r["plain"] for r in out], statistic="heavy-mode share, plain")
        offset = mean_ci([r["annealed"] - HEAVY_CLAIM for r in out], statistic="annealed share − 0.78")
        checks = [
            Check.ci_within(f"annealed Langevin, exact score: heavy-mode share − {HEAVY_CLAIM}, 95% CI within "
                            f"± {HEAVY_BAND}", offset, HEAVY_BAND, label="annealed share − 0.78 (CI)"),
            Check.ci_below(f"plain Langevin, exact data score: heavy-mode share, 95% CI upper end below the "
                           f"annealed band ({HEAVY_CLAIM - HEAVY_BAND})", plain, HEAVY_CLAIM - HEAVY_BAND,
                           label="plain share CI high"),
        ]
        metrics = {"annealed_heavy_share": annealed.mean, "annealed_heavy_share_ci_low": annealed.low,
                   "annealed_heavy_share_ci_high": annealed.high, "plain_heavy_share": plain.mean,
                   "plain_heavy_share_ci_low": plain.low, "plain_heavy_share_ci_high": plain.high,
                   "chains": n}
        return Part(metrics, checks, data={"out": out})

    return Plan([(mass_run, (n, ctx.seed + 100 * k)) for k in range(n_seeds)], finish)


def learned_plan(ctx: Context, n_seeds: int, steps: int, n_train: int, n_eval: int) -> Plan:
    jobs = [(obj, ctx.seed + 1000 * k) for obj in ("ssm", "ncsn") for k in range(n_seeds)]  # ssm: slower first
    counts = ctx.artifacts.counts()

    def finish(out: list) -> Part:
        ctx.artifacts.add_counts(counts, [r["loaded"] for r in out])
        metrics, checks, rows = {}, [], []
        for obj, name in (("ncsn", "denoising score matching"), ("ssm", "sliced score matching")):
            runs = [r for r in out if r["objective"] == obj]
            err = mean_ci([r["error"] for r in runs], statistic=f"{name}: relative score error")
            heavy = mean_ci([r["heavy"] for r in runs], statistic=f"{name}: annealed heavy share")
            metrics.update({f"{obj}_score_error": err.mean, f"{obj}_score_error_ci_high": err.high,
                            f"{obj}_annealed_heavy_share": heavy.mean})
            checks.append(Check.ci_below(f"{name}: σ²-weighted relative error of the learned score against the "
                                         f"exact one (95% CI) <= {LEARNED_BOUND}", err, LEARNED_BOUND,
                                         label=f"{obj} score error CI high"))
            rows.append([name, f"{err.mean:.4f}", f"[{err.low:.4f}, {err.high:.4f}]",
                         f"{heavy.mean:.3f} [{heavy.low:.3f}, {heavy.high:.3f}]", err.n])
        table = Table(f"Learned noise-conditional scores on the NCSN toy ({steps} steps, {n_seeds} seeds): relative "
                      "error against the exact score, and annealed Langevin from the learned score",
                      ["objective", "relative score error", "95% CI", "heavy-mode share (annealed)", "n"], rows)
        return Part(metrics, checks, [table], data={"out": out})

    return Plan([(learned_run, (ctx.artifacts, obj, seed, steps, n_train, n_eval, ctx.seed + 11))
                 for obj, seed in jobs], finish)


def digits_samples(ctx: Context, steps: int = 3000, n_steps_each: int = 20, n: int = 500) -> dict:
    """Full scale only: NCSN (VE U-Net, NCSN DSM over NCSNv2's levels) on sklearn digits. Saves a sample grid
    and returns the Fréchet distance of n samples to the held-out digits in the feature space of a small
    digits classifier trained here, beside the same distance of the training digits (the floor)."""
    from ..diffusion.data import digits_data
    from ..diffusion.metrics import digits_fd, train_digits_features
    from ..diffusion.smld import annealed_langevin, geometric_sigmas, ncsnv2_sigma_max
    from ..diffusion.train import ScoreTraining, make_sde, trained_score_model

    images = digits_data(split="train", seed=ctx.seed)[0]
    held_out = digits_data(split="test", seed=ctx.seed)[0]
    sigma_max = round(ncsnv2_sigma_max(images.flatten(1)), 2)
    levels = 30
    cfg = ScoreTraining(objective="ncsn", steps=steps, batch_size=128, lr=1e-3, warmup=min(100, steps // 10),
                        schedule="cosine", ema_decay=0.999, n_levels=levels)
    sde = make_sde("ve", sigma_min=0.01, sigma_max=sigma_max)
    model, _ = trained_score_model(ctx.artifacts, "ncsn-digits", sde, images, cfg, ctx.seed, channels=32)
    model.eval()
    sigmas = geometric_sigmas(sigma_max, 0.01, levels)
    g = ctx.generator(7)
    start = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        x = annealed_langevin(model.score_at_sigma, start, sigmas, n_steps_each=n_steps_each, step_lr=2e-5,
                              generator=g, denoise=True).x
    features = train_digits_features(generator=ctx.generator(8), seed=ctx.seed)
    fd = digits_fd(x.clamp(0, 1), held_out, features)
    floor = digits_fd(images[: len(held_out)], held_out, features)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(8, 8, figsize=(5, 5))
    for ax, img in zip(axes.flat, x[:64].clamp(0, 1)):
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    ctx.save_figure(fig, "digits", f"NCSN on sklearn digits: {levels} levels {sigma_max:g} → 0.01 (NCSNv2's σ1 rule), "
                    f"annealed Langevin {n_steps_each} steps per level, final denoising step. Fréchet distance to "
                    f"held-out digits {fd:.2f} (training digits: {floor:.2f}).")
    return {"digits_fd": fd, "digits_fd_floor": floor,
            "digits_classifier_accuracy": features.fit_info["test_accuracy"]}


# --- plots -------------------------------------------------------------------------------------------

def plot_mass(ctx: Context, mass: Part, learned: Part) -> None:
    import matplotlib.pyplot as plt

    first = mass.data["out"][0]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), constrained_layout=True)
    for ax, (title, x) in zip(axes[:2], (("annealed Langevin (exact score)", first["annealed_x"]),
                                         ("plain Langevin (exact score)", first["plain_x"]))):
        x = np.asarray(x)
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5)
        ax.set(xlim=(-9, 9), ylim=(-9, 9), title=title)
        ax.set_aspect("equal")
    runs = mass.data["out"]
    labels = ["annealed\n(exact)", "plain\n(exact)", "annealed\n(DSM net)", "annealed\n(SSM net)"]
    values = [[r["annealed"] for r in runs], [r["plain"] for r in runs],
              [r["heavy"] for r in learned.data["out"] if r["objective"] == "ncsn"],
              [r["heavy"] for r in learned.data["out"] if r["objective"] == "ssm"]]
    ax = axes[2]
    ax.bar(range(4), [np.mean(v) for v in values], color=["C0", "C1", "C2", "C3"])
    for i, v in enumerate(values):
        ax.plot([i] * len(v), v, "k.", ms=4)
    ax.axhspan(HEAVY_CLAIM - HEAVY_BAND, HEAVY_CLAIM + HEAVY_BAND, color="green", alpha=0.15, label="0.78 ± 0.03")
    ax.axhline(0.8, color="k", lw=0.8, ls=":", label="true weight 0.8")
    ax.set(xticks=range(4), xticklabels=labels, ylabel="share in the heavy mode (+5, +5)", ylim=(0, 1))
    ax.legend(fontsize=8)
    ctx.save_figure(fig, "mode-mass", f"Chains started uniform on [−8, 8]², annealed over σ 20 → 1 (the samples are "
                    f"the toy blurred by σ_L = 1); left: 600 chains of seed {first['seed']}; right: heavy-mode share per "
                    "seed (dots) and mean (bars), for the exact score and for the DSM / sliced-SM networks.")


def plot_fields(ctx: Context, learned: Part) -> None:
    import matplotlib.pyplot as plt

    conditional, _ = exact_scores()
    grid = torch.stack(torch.meshgrid(torch.linspace(-9, 9, 19), torch.linspace(-9, 9, 19), indexing="xy"), -1)
    pts = grid.reshape(-1, 2).double()
    fields = [("exact score, σ = 1", conditional(pts, SIGMA_MIN).numpy())]
    for obj, name in (("ncsn", "DSM"), ("ssm", "sliced SM")):
        r = next(r for r in learned.data["out"] if r["objective"] == obj)
        fields.append((f"{name} network, σ = 1 (seed {r['seed']})", np.asarray(r["field"])))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8), constrained_layout=True)
    for ax, (title, f) in zip(axes, fields):
        norm = np.linalg.norm(f, axis=1, keepdims=True) + 1e-12
        ax.quiver(pts[:, 0], pts[:, 1], f[:, 0] / norm[:, 0], f[:, 1] / norm[:, 0], np.log1p(norm[:, 0]), scale=30)
        ax.set(title=title, xlim=(-9.5, 9.5), ylim=(-9.5, 9.5))
        ax.set_aspect("equal")
    ctx.save_figure(fig, "score-fields", "Score directions (colour: log(1 + |s|)) at the smallest level σ = 1.")


class SMLD(NoteExperiment):
    slug = "smld"

    def measure(self, ctx: Context) -> Result:
        n_seeds = ctx.pick(5, 8, tiny=2)
        learned, mass = run_plans([  # the training runs first: the short chains fill the cores at the end
            learned_plan(ctx, n_seeds=ctx.pick(3, 5, tiny=2), steps=ctx.pick(600, 3000, tiny=20),
                         n_train=ctx.pick(10000, 20000, tiny=512), n_eval=ctx.pick(2000, 4000, tiny=64)),
            mass_plan(ctx, n=ctx.pick(2000, 4000, tiny=64), n_seeds=n_seeds),
        ], workers=ctx.pick(None, None, tiny=1))
        ctx.progress(0.9, "plots")
        plot_mass(ctx, mass, learned)
        plot_fields(ctx, learned)
        m = {**mass.metrics, **learned.metrics}
        if not ctx.quick:
            m.update(digits_samples(ctx))
        summary = (f"Heavy-mode share: annealed {m['annealed_heavy_share']:.3f} [{m['annealed_heavy_share_ci_low']:.3f}, "
                   f"{m['annealed_heavy_share_ci_high']:.3f}], plain {m['plain_heavy_share']:.3f} over {n_seeds} seeds; "
                   f"relative score error DSM {m['ncsn_score_error']:.3f}, sliced SM {m['ssm_score_error']:.3f}.")
        return Result(metrics=m, checks=mass.checks + learned.checks, tables=learned.tables, summary=summary)
