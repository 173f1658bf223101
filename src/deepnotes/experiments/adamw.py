"""Note 10: Adam + L2 vs AdamW (decoupled weight decay).

Adam with L2 adds lambda*theta to the gradient, so the decay goes through the
adaptive denominator; AdamW shrinks the weights directly, theta <- theta(1 - lr*lambda).

Measured here:
* parity of deepnotes' Adam/AdamW with torch.optim, step for step, on the CNN;
* lr x weight-decay grids of test error for Adam+L2 and AdamW on sklearn digits
  (each cell a full fit() run with cosine decay), and from them
  - separability: the share of the grid's variance an additive model
    err(lr, wd) = f(lr) + g(wd) explains (two-way main effects, R^2);
  - how far the best wd moves as lr changes (std of log10 best wd over the lr rows);
  - the best test error of each method.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..optim import Adam, AdamW
from ..optim.schedules import get_schedule
from ..train import fit
from .base import Check, Context, NoteExperiment, Result, Table
from .digits import DigitsCNN, cross_entropy_loss, error_rate, load_digits_split

__all__ = ["AdamWExperiment", "additive_r2", "best_wd_spread"]

# Grid endpoints fixed before any run; quick takes 3 points per axis, full 5.
LR_RANGE = (1e-3, 1e-2)
WD_RANGE = {"adam_l2": (1e-5, 1e-2), "adamw": (1e-3, 1.0)}


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


def _train(method: str, lr: float, wd: float, data, epochs: int, seed: int) -> float:
    train, test = data
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = Adam(model.parameters(), lr=lr, weight_decay=wd) if method == "adam_l2" else \
        AdamW(model.parameters(), lr=lr, weight_decay=wd)
    steps = epochs * (len(train) // 64)
    fit(model, opt, train, cross_entropy_loss, max_steps=steps, batch_size=64, seed=seed, progress=False,
        schedule=get_schedule("cosine", warmup_steps=steps // 20, total_steps=steps))
    return error_rate(model, test)


def _parity(data, steps: int) -> dict[str, float]:
    """Max |theta_ours - theta_torch| / max |theta| after lock-step training, fp32."""
    train, _ = data
    x, y = train.tensors
    out = {}
    for name, ours_cls, torch_cls in [("adam", Adam, torch.optim.Adam), ("adamw", AdamW, torch.optim.AdamW)]:
        torch.manual_seed(0)
        a = DigitsCNN()
        b = DigitsCNN()
        b.load_state_dict(a.state_dict())
        oa = ours_cls(a.parameters(), lr=3e-3, weight_decay=1e-2)
        ob = torch_cls(b.parameters(), lr=3e-3, weight_decay=1e-2)
        g = torch.Generator().manual_seed(1)
        for _ in range(steps):
            idx = torch.randint(0, len(y), (64,), generator=g)
            for model, opt in ((a, oa), (b, ob)):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        diff = max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))
        scale = max(float(p.detach().abs().max()) for p in b.parameters())
        out[name] = diff / scale
    return out


class AdamWExperiment(NoteExperiment):
    slug = "adamw"
    single_threaded = True  # small models: one thread is faster and core-count independent

    def measure(self, ctx: Context) -> Result:
        import matplotlib.pyplot as plt

        data = load_digits_split(seed=ctx.seed)
        n_points = ctx.pick(3, 5)
        epochs = ctx.pick(12, 30)
        lrs = np.geomspace(*LR_RANGE, n_points)
        metrics: dict[str, float] = {}

        parity = _parity(data, steps=ctx.pick(100, 300))
        metrics["parity_adam_max_rel_diff"] = parity["adam"]
        metrics["parity_adamw_max_rel_diff"] = parity["adamw"]
        ctx.progress(0.05, "parity with torch.optim")

        grids, wds = {}, {}
        cells = 2 * n_points * n_points
        done = 0
        for method in ("adam_l2", "adamw"):
            wds[method] = np.geomspace(*WD_RANGE[method], n_points)
            err = np.zeros((n_points, n_points))
            for i, lr in enumerate(lrs):
                for j, wd in enumerate(wds[method]):
                    err[i, j] = _train(method, float(lr), float(wd), data, epochs, ctx.seed)
                    done += 1
                    ctx.progress(0.05 + 0.9 * done / cells, f"{method} lr={lr:.1e} wd={wd:.1e}")
            grids[method] = err
            metrics[f"{method}_best_error"] = float(err.min())
            metrics[f"{method}_additive_r2"] = additive_r2(err)
            metrics[f"{method}_best_wd_spread_decades"] = best_wd_spread(err, wds[method])

        n_test = len(data[1])
        p = metrics["adam_l2_best_error"]
        two_se = 2 * math.sqrt(max(p * (1 - p), 1 / n_test) / n_test)  # binomial s.e. of a test error
        metrics["test_examples"] = n_test
        checks = [
            Check("our Adam matches torch.optim.Adam (max rel param diff, fp32)", parity["adam"], "<=", 1e-5),
            Check("our AdamW matches torch.optim.AdamW (max rel param diff, fp32)", parity["adamw"], "<=", 1e-5),
            Check("separability: additive R^2(AdamW) - R^2(Adam+L2)",
                  metrics["adamw_additive_r2"] - metrics["adam_l2_additive_r2"], ">=", 0.0),
            Check("best-wd movement across lr (decades): AdamW - Adam+L2",
                  metrics["adamw_best_wd_spread_decades"] - metrics["adam_l2_best_wd_spread_decades"], "<=", 0.0),
            Check("best test error: AdamW - Adam+L2 (bound: 2 binomial s.e.)",
                  metrics["adamw_best_error"] - metrics["adam_l2_best_error"], "<=", two_se),
        ]

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        vmax = max(g.max() for g in grids.values())
        vmin = min(g.min() for g in grids.values())
        for ax, method, label in zip(axes, ("adam_l2", "adamw"), ("Adam + L2", "AdamW")):
            im = ax.imshow(grids[method] * 100, origin="lower", cmap="viridis_r", vmin=vmin * 100, vmax=vmax * 100)
            ax.set_xticks(range(n_points), [f"{w:.0e}" for w in wds[method]], rotation=45)
            ax.set_yticks(range(n_points), [f"{lr:.0e}" for lr in lrs])
            ax.set(xlabel="weight decay", ylabel="learning rate", title=f"{label}: test error %")
            for i in range(n_points):
                for j in range(n_points):
                    ax.text(j, i, f"{grids[method][i, j] * 100:.1f}", ha="center", va="center", color="k", fontsize=8)
            best = np.unravel_index(grids[method].argmin(), grids[method].shape)
            ax.plot(best[1], best[0], "r*", ms=12)
        fig.colorbar(im, ax=axes, shrink=0.8)
        ctx.save_figure(fig, "grids", f"Test error on sklearn digits ({n_test} test images) after {epochs} epochs "
                                      "with cosine decay; star: best cell.")
        ctx.progress(1.0, "done")

        rows = [[label, f"{metrics[f'{m}_best_error'] * 100:.2f}%", f"{metrics[f'{m}_additive_r2']:.3f}",
                 f"{metrics[f'{m}_best_wd_spread_decades']:.3f}"]
                for m, label in (("adam_l2", "Adam + L2"), ("adamw", "AdamW"))]
        return Result(
            metrics=metrics,
            checks=checks,
            tables=[Table("lr x weight-decay grids", ["method", "best test error", "additive R^2",
                                                      "best-wd spread (decades)"], rows)],
            summary=(f"{n_points}x{n_points} grids, lr {LR_RANGE[0]:g}..{LR_RANGE[1]:g}; best error Adam+L2 "
                     f"{metrics['adam_l2_best_error'] * 100:.2f}% vs AdamW {metrics['adamw_best_error'] * 100:.2f}%; "
                     f"additive R^2 {metrics['adam_l2_additive_r2']:.2f} vs {metrics['adamw_additive_r2']:.2f}."),
        )
