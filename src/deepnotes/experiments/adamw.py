r"""Note 10: Adam + L2 vs AdamW (decoupled weight decay), in both AdamW parametrisations.

With lr γ_t = γ_0·η_t (η_t the schedule multiplier) and weight decay λ:

    Adam + L2            g ← g + λθ              the decay goes through Adam's denominator
    AdamW, torch form    θ ← θ(1 − γ_t·λ)        torch.optim.AdamW: the decay scales with the lr
    AdamW, paper form    θ ← θ(1 − η_t·λ)        Loshchilov & Hutter's Algorithm 2,
                                                 AdamW(independent_weight_decay=True)

The paper form with λ equals the torch form with λ/γ_0, so in the torch form
the λ that gives a fixed per-step decay moves as 1/γ_0 across an lr grid by
construction; the paper form removes that.

Measured here:
* parity with torch.optim, lock-step fp32 training of the CNN under a cosine
  schedule: Adam, AdamW, and the paper form against torch's AdamW with λ/γ_0;
* lr × weight-decay grids of test error on sklearn digits for the three methods,
  each cell a full fit() run, over seeds (seed s: one model init and one data
  order shared by every cell of every method); per seed and method
  - the additive R² (share of the grid's variance err ≈ μ + a(lr) + b(wd) explains),
  - the spread of the best wd across lr rows (std of log10, decades),
  - the best test error;
  each AdamW form decided against Adam + L2 with paired intervals over seeds.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..optim import Adam, AdamW
from ..optim.schedules import get_schedule, set_lr
from ..train import fit
from .base import Check, Context, NoteExperiment, Result, Table
from .digits import DigitsCNN, cross_entropy_loss, error_rate, load_digits_split
from .parallel import map_runs
from .stats import Interval, mean_ci, paired_ci

__all__ = ["AdamWExperiment", "METHODS", "LR_RANGE", "LR_CENTRAL", "WD_RANGE", "additive_r2", "best_wd_spread",
           "paper_wd_range", "make_optimizer", "train_cell", "parity", "run_grids", "separability", "plot_grids"]

# Grid endpoints, fixed before any run. Adam + L2 and torch's AdamW: around each one's customary values.
LR_RANGE = (1e-3, 1e-2)
LR_CENTRAL = math.sqrt(LR_RANGE[0] * LR_RANGE[1])  # ≈ 3.16e-3, the grid's central lr (geometric mean)


def paper_wd_range(torch_range: tuple[float, float], lr: float) -> tuple[float, float]:
    """The paper-form λ range whose per-step decay η_t·λ equals the torch form's γ_t·λ at initial lr `lr`.

    From θ(1 − η_t·λ_paper) = θ(1 − γ_0·η_t·λ_torch): λ_paper = γ_0·λ_torch.
    """
    return torch_range[0] * lr, torch_range[1] * lr


WD_RANGE = {
    "adam_l2": (1e-5, 1e-2),
    "adamw_torch": (1e-3, 1.0),
    "adamw_paper": paper_wd_range((1e-3, 1.0), LR_CENTRAL),  # (3.16e-6, 3.16e-3): same decay at the central lr
}
METHODS = {"adam_l2": "Adam + L2", "adamw_torch": "AdamW (torch form)", "adamw_paper": "AdamW (paper form)"}
FORMS = {"adamw_torch": "torch form", "adamw_paper": "paper form"}
BATCH = 64


def additive_r2(err: np.ndarray) -> float:
    """R^2 of err[i, j] ~ mu + a_i + b_j (row and column main effects)."""
    mu = err.mean()
    fitted = err.mean(1, keepdims=True) + err.mean(0, keepdims=True) - mu
    ss_total = ((err - mu) ** 2).sum()
    if ss_total == 0:
        return 1.0
    return float(1 - ((err - fitted) ** 2).sum() / ss_total)


def best_wd_spread(err: np.ndarray, wds: np.ndarray) -> float:
    """Std over lr rows of log10 of the wd with the lowest error (decades)."""
    return float(np.log10(wds[err.argmin(1)]).std())


def make_optimizer(method: str, params, lr: float, wd: float) -> Adam:
    """The optimizer of a method of METHODS at initial lr `lr` and weight decay `wd`."""
    if method == "adam_l2":
        return Adam(params, lr=lr, weight_decay=wd)
    if method in FORMS:
        return AdamW(params, lr=lr, weight_decay=wd, independent_weight_decay=method == "adamw_paper")
    raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")


def _cosine(steps: int):
    return get_schedule("cosine", warmup_steps=steps // 20, total_steps=steps)


def train_cell(method: str, lr: float, wd: float, data, epochs: int, generator, seed: int) -> float:
    """Test error of one grid cell: DigitsCNN initialised from `generator`, trained with data order `seed`."""
    train, test = data
    model = DigitsCNN(generator=generator)
    opt = make_optimizer(method, model.parameters(), lr, wd)
    steps = epochs * (len(train) // BATCH)
    fit(model, opt, train, cross_entropy_loss, max_steps=steps, batch_size=BATCH, seed=seed, progress=False,
        schedule=_cosine(steps))
    return error_rate(model, test)


# --- the three parts ---------------------------------------------------------------------------

def parity(ctx: Context, data, steps: int) -> tuple[dict[str, float], list[Check]]:
    """Lock-step fp32 training of two copies of the CNN under a cosine schedule, ours vs torch.optim;
    max |θ_ours − θ_torch| / max |θ| at the end."""
    train, _ = data
    x, y = train.tensors
    lr, wd = 3e-3, 1e-2
    pairs = {  # name: (ours, torch's equivalent)
        "adam": (lambda p: Adam(p, lr=lr, weight_decay=wd), lambda p: torch.optim.Adam(p, lr=lr, weight_decay=wd)),
        "adamw": (lambda p: AdamW(p, lr=lr, weight_decay=wd), lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=wd)),
        "adamw_paper": (lambda p: AdamW(p, lr=lr, weight_decay=wd, independent_weight_decay=True),
                        lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=wd / lr)),  # λ_torch = λ/γ_0
    }
    schedule = _cosine(steps)
    metrics: dict[str, float] = {}
    for k, (name, (ours, theirs)) in enumerate(pairs.items()):
        a, b = DigitsCNN(generator=ctx.generator(1000 + k)), DigitsCNN(generator=ctx.generator(1000 + k))
        opts = (ours(a.parameters()), theirs(b.parameters()))
        batches = ctx.generator(2000 + k)
        for step in range(steps):
            idx = torch.randint(0, len(y), (BATCH,), generator=batches)
            for model, opt in zip((a, b), opts):
                set_lr(opt, step, schedule)
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        diff = max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))
        scale = max(float(p.detach().abs().max()) for p in b.parameters())
        metrics[f"parity_{name}_max_rel_diff"] = diff / scale
    checks = [
        Check("our Adam matches torch.optim.Adam (max rel param diff, fp32, cosine schedule)",
              metrics["parity_adam_max_rel_diff"], "<=", 1e-5, label="Adam parity"),
        Check("our AdamW matches torch.optim.AdamW (max rel param diff, fp32, cosine schedule)",
              metrics["parity_adamw_max_rel_diff"], "<=", 1e-5, label="AdamW parity"),
        Check("paper form with λ matches torch.optim.AdamW with λ/γ_0 (max rel param diff, fp32, cosine schedule)",
              metrics["parity_adamw_paper_max_rel_diff"], "<=", 1e-5, label="paper = torch λ/γ0"),
    ]
    return metrics, checks


def run_grids(ctx: Context, data, lrs: np.ndarray, wds: dict[str, np.ndarray], epochs: int,
              n_seeds: int, workers: int | None = None) -> dict[str, np.ndarray]:
    """{method: test errors (S, n_lr, n_wd)}: every cell of every method and seed, one process per core
    (or `workers`; 1 runs them here).

    Seed k gives every cell the model init of ctx.generator(k) and the data order ctx.seed + k.
    """
    jobs = [(method, float(lr), float(wd), data, epochs, ctx.generator(k), ctx.seed + k)
            for method in METHODS for k in range(n_seeds) for lr in lrs for wd in wds[method]]
    errors = np.asarray(map_runs(train_cell, jobs, workers=workers), dtype=float)
    grids = errors.reshape(len(METHODS), n_seeds, len(lrs), -1)  # (M·S·L·W,) -> (M, S, L, W), the jobs' order
    return dict(zip(METHODS, grids))


def separability(grids: dict[str, np.ndarray], wds: dict[str, np.ndarray],
                 n_test: int) -> tuple[dict[str, float], list[Check], list[Table]]:
    """Per-seed statistics of each grid and, for each AdamW form, the paired checks against Adam + L2."""
    per_seed = {m: {"best_error": g.min(axis=(1, 2)),
                    "additive_r2": np.array([additive_r2(e) for e in g]),
                    "best_wd_spread_decades": np.array([best_wd_spread(e, wds[m]) for e in g])}
                for m, g in grids.items()}
    intervals: dict[str, Interval] = {}
    metrics: dict[str, float] = {"test_examples": n_test, "seeds": len(grids["adam_l2"])}
    for m, stats in per_seed.items():
        for stat, values in stats.items():
            intervals[f"{m}_{stat}"] = ci = mean_ci(values, statistic=f"{METHODS[m]} {stat}")
            metrics[f"{m}_{stat}"], metrics[f"{m}_{stat}_ci_low"], metrics[f"{m}_{stat}_ci_high"] = \
                ci.mean, ci.low, ci.high
    # Non-inferiority margin: 2 binomial s.e. of Adam + L2's best test error (mean over seeds), test-set noise.
    p = metrics["adam_l2_best_error"]
    margin = 2 * math.sqrt(max(p * (1 - p), 1 / n_test) / n_test)
    metrics["best_error_margin"] = margin

    adam = per_seed["adam_l2"]
    checks, diff_rows = [], []
    for m, form in FORMS.items():
        r2 = paired_ci(per_seed[m]["additive_r2"], adam["additive_r2"], statistic=f"R² {form} − Adam+L2")
        spread = paired_ci(per_seed[m]["best_wd_spread_decades"], adam["best_wd_spread_decades"],
                           statistic=f"best-wd spread {form} − Adam+L2")
        best = paired_ci(per_seed[m]["best_error"], adam["best_error"], statistic=f"best error {form} − Adam+L2")
        checks += [
            Check.ci_above(f"separability: additive R² of AdamW ({form}) − Adam + L2, paired over seeds, > 0",
                           r2, 0.0, label=f"R² gain ({form}) CI low"),
            Check.ci_below(f"best-wd movement across lr (decades): AdamW ({form}) − Adam + L2, paired, <= 0",
                           spread, 0.0, label=f"wd spread diff ({form}) CI high"),
            Check.ci_below(f"best test error: AdamW ({form}) − Adam + L2, paired, <= 2 binomial s.e. of Adam + L2's",
                           best, margin, label=f"best error diff ({form}) CI high"),
        ]
        for key, ci in (("r2_gain", r2), ("wd_spread_diff", spread), ("best_error_diff", best)):
            metrics[f"{m}_{key}"], metrics[f"{m}_{key}_ci_low"], metrics[f"{m}_{key}_ci_high"] = \
                ci.mean, ci.low, ci.high
        diff_rows.append([METHODS[m], str(r2), str(spread), str(best)])

    method_rows = [[METHODS[m], str(intervals[f"{m}_best_error"]), str(intervals[f"{m}_additive_r2"]),
                    str(intervals[f"{m}_best_wd_spread_decades"])] for m in METHODS]
    seed_rows = [[k, METHODS[m]] + [f"{per_seed[m][s][k]:.4f}" for s in per_seed[m]]
                 for k in range(len(adam["best_error"])) for m in METHODS]
    tables = [
        Table("per method, mean over seeds [95% CI]", ["method", "best test error", "additive R²",
                                                       "best-wd spread (decades)"], method_rows),
        Table("AdamW − Adam + L2, paired over seeds [95% CI]", ["AdamW form", "R² gain", "wd spread diff",
                                                               "best error diff"], diff_rows),
        Table("per seed", ["seed offset", "method", "best test error", "additive R²", "best-wd spread"], seed_rows),
    ]
    return metrics, checks, tables


def plot_grids(ctx: Context, grids: dict[str, np.ndarray], lrs: np.ndarray, wds: dict[str, np.ndarray],
               caption: str) -> None:
    """One heat map per method of the mean-over-seeds test error; red frame: best cell."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    means = {m: g.mean(0) * 100 for m, g in grids.items()}
    vmin, vmax = min(g.min() for g in means.values()), max(g.max() for g in means.values())
    fig, axes = plt.subplots(1, len(means), figsize=(5 * len(means), 4.2), constrained_layout=True)
    for ax, (m, err) in zip(axes, means.items()):
        im = ax.imshow(err, origin="lower", cmap="viridis_r", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(wds[m])), [f"{w:.0e}" for w in wds[m]], rotation=45)
        ax.set_yticks(range(len(lrs)), [f"{lr:.0e}" for lr in lrs])
        ax.set(xlabel="weight decay λ", title=f"{METHODS[m]}: test error %")
        for i in range(err.shape[0]):
            for j in range(err.shape[1]):
                ax.text(j, i, f"{err[i, j]:.1f}", ha="center", va="center", color="k", fontsize=9)
        i, j = np.unravel_index(err.argmin(), err.shape)
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
    axes[0].set_ylabel("initial learning rate γ0")
    fig.colorbar(im, ax=axes, shrink=0.8)
    ctx.save_figure(fig, "grids", caption)


class AdamWExperiment(NoteExperiment):
    slug = "adamw"
    single_threaded = True  # small models: one thread is faster and core-count independent

    def measure(self, ctx: Context) -> Result:
        data = load_digits_split(seed=ctx.seed)
        # quick: 3 methods x 4 seeds x 3x3 cells of 8 epochs, ~0.8 CPU-s each unloaded: < 60 s on 2 cores
        n_points, epochs, n_seeds = ctx.pick(3, 5, tiny=2), ctx.pick(8, 20, tiny=1), ctx.pick(4, 6, tiny=2)
        lrs = np.geomspace(*LR_RANGE, n_points)
        wds = {m: np.geomspace(*WD_RANGE[m], n_points) for m in METHODS}

        metrics, checks = parity(ctx, data, steps=ctx.pick(60, 300, tiny=4))
        ctx.progress(0.05, "parity with torch.optim")
        # tiny runs its one-epoch cells here: a pool's start-up (torch and torch._dynamo imported
        # afresh in every worker) costs more than they do.
        grids = run_grids(ctx, data, lrs, wds, epochs, n_seeds, workers=ctx.pick(None, None, tiny=1))
        ctx.progress(0.95, f"{len(METHODS)} methods x {n_seeds} seeds x {n_points}x{n_points} grids")
        stats, sep_checks, tables = separability(grids, wds, n_test=len(data[1]))
        metrics.update(stats)
        checks += sep_checks
        plot_grids(ctx, grids, lrs, wds, f"Test error on sklearn digits ({len(data[1])} test images), mean over "
                   f"{n_seeds} seeds, after {epochs} epochs with cosine decay; red frame: best cell.")
        ctx.progress(1.0, "done")

        summary = (f"{n_points}x{n_points} grids, lr {LR_RANGE[0]:g}..{LR_RANGE[1]:g}, {n_seeds} seeds, {epochs} "
                   "epochs; best error (mean over seeds) " +
                   ", ".join(f"{METHODS[m]} {metrics[f'{m}_best_error'] * 100:.2f}%" for m in METHODS) +
                   "; additive R² " + " / ".join(f"{metrics[f'{m}_additive_r2']:.2f}" for m in METHODS) + ".")
        return Result(metrics=metrics, checks=checks, tables=tables, summary=summary)
