r"""Note 3: diffusion from SDEs — reverse-time SDE samplers and the probability-flow ODE.

Forward SDE dx = f(x, t) dt + g(t) dw; its reverse dx = [f − g² ∇log p_t] dt + g dw̄; the
probability-flow ODE dx = [f − ½ g² ∇log p_t] dt has the same marginals, so it samples with an
adaptive solver and gives exact likelihoods.

Measured here, on FFJORD's 8 gaussians with score networks trained by fit() (deepnotes.diffusion):

* quality: sliced Wasserstein-2 between 1,000 samples and 1,000 fresh data points, divided by the
  noise floor (the mean SW2 of fresh data samples of the same size against the same reference),
  for Euler–Maruyama (1000 steps), predictor–corrector (reverse diffusion + Langevin, snr 0.16)
  and the probability-flow ODE (RK45, rtol = atol = 1e-5); decided on the VP model over seeds,
  each seed a separately trained network (95% t-interval of the ratio, upper end ≤ 1.5);
* cost: the ODE's counted score evaluations against the reverse SDE's 1000 (claim: far fewer,
  taken as at most a tenth — an order of magnitude);
* VE and sub-VP models (full scale; VE also in the tiny wiring test) are scored the same way and
  reported beside VP, without a check of their own;
* SW2 against NFE on the seed-0 VP (and at full scale VE) models: Euler–Maruyama and the model family's few-step
  solver (DPM-Solver++(2M) for VP, EDM's Heun for VE) at 10–100 steps, RK45 at looser tolerances,
  and the PC point; and the ODE's NFE with the exact mixture score, for scale;
* likelihood: the ODE log-likelihood of Gaussian data N(0, 0.5² I) under its exact VP score
  against the closed form (claim: within 1e-3 nats), and the trained VP model's ODE NLL on test
  points beside the true density's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .base import Check, Context, NoteExperiment, Part, Result, Table
from .parallel import Plan, run_plans
from .stats import mean_ci

__all__ = ["ScoreSDE", "ToySetup", "toy_setup", "noise_floor", "train_and_sample", "gaussian_likelihood"]

TOY = "8gaussians"
SDE_LABEL = {"vp": "VP", "subvp": "sub-VP", "ve": "VE"}
CLAIMED = {"euler_maruyama": "Euler–Maruyama (1000 steps)", "pc": "predictor–corrector", "ode": "probability-flow ODE"}
BOUND = 1.5  # the note's "within 1.5x of the noise floor"
FAR_FEWER = 0.1  # "far fewer evaluations": at most a tenth


@dataclass(frozen=True)
class ToySetup:
    n_train: int  # training points (one fixed draw)
    n_eval: int  # samples per sampler, and the size of the fresh data samples of the noise floor
    n_reference: int  # the data sample every SW2 is measured against (large: its own noise is small)
    floor_draws: int  # fresh data samples averaged into the noise floor
    training: object  # deepnotes.diffusion.train.ScoreTraining
    hidden: int
    pc_steps: int  # PC predictor steps (NFE = 2 x steps with one corrector step)
    curve_steps: tuple[int, ...]  # steps of the fixed-step samplers in the SW2-vs-NFE curve
    curve_tols: tuple[float, ...]  # RK45 tolerances in the curve
    n_nll: int  # test points of the trained models' ODE NLL
    other_sdes: tuple[str, ...]  # SDEs besides VP (one seed each at quick scale)


def toy_setup(ctx: Context) -> ToySetup:
    from ..diffusion.train import ScoreTraining

    # Large batches: a step of 1024 costs 1.5x one of 256 on the CPU (per-op overhead dominates) and the DSM
    # gradient's noise, not the step count, limits a short run's sample quality.
    training = ScoreTraining(steps=ctx.pick(1500, 5000, tiny=30), batch_size=ctx.pick(1024, 1024, tiny=64), lr=5e-3,
                             warmup=100 if not ctx.tiny else 5, schedule="cosine", ema_decay=0.995)
    return ToySetup(n_train=ctx.pick(10000, 20000, tiny=512), n_eval=ctx.pick(1000, 2000, tiny=64),
                    n_reference=ctx.pick(10000, 20000, tiny=256),
                    floor_draws=ctx.pick(4, 8, tiny=2), training=training, hidden=ctx.pick(128, 128, tiny=16),
                    pc_steps=ctx.pick(500, 1000, tiny=25), curve_steps=ctx.pick((10, 20, 50, 100), (10, 20, 50, 100, 200),
                                                                              tiny=(2,)),
                    curve_tols=ctx.pick((1e-3,), (1e-2, 1e-3, 1e-4), tiny=(1e-2,)), n_nll=ctx.pick(100, 500, tiny=8),
                    other_sdes=ctx.pick((), ("ve", "subvp"), tiny=("ve",)))


def noise_floor(reference: torch.Tensor, n: int, draws: int, seed: int) -> float:
    """Mean SW2 between `draws` fresh data samples of size n and `reference`: what a perfect sampler scores."""
    from ..diffusion.data import toy_data
    from ..diffusion.metrics import sliced_wasserstein

    return float(np.mean([float(sliced_wasserstein(toy_data(TOY, n, generator=torch.Generator().manual_seed(seed + k)),
                                                   reference, generator=torch.Generator().manual_seed(1)))
                          for k in range(draws)]))


def _sde(name: str, train_x: torch.Tensor):
    from ..diffusion.smld import ncsnv2_sigma_max
    from ..diffusion.train import make_sde

    if name == "ve":  # NCSNv2's rule: sigma_max = the largest distance between two training points
        return make_sde("ve", sigma_min=0.01, sigma_max=round(ncsnv2_sigma_max(train_x), 2))
    return make_sde(name)


def train_and_sample(store, sde_name: str, seed: int, setup: ToySetup, data_seed: int, extras: bool) -> dict:
    """Trains (or loads) one score model and scores its samplers; runs in a worker process."""
    from ..diffusion.data import toy_data
    from ..diffusion.likelihood import log_likelihood
    from ..diffusion.metrics import sliced_wasserstein
    from ..diffusion.data import toy_mixture
    from ..diffusion.mixture import GaussianMixture
    from ..diffusion.samplers import sample
    from ..diffusion.train import trained_score_model

    train_x = toy_data(TOY, setup.n_train, generator=torch.Generator().manual_seed(data_seed))
    reference = toy_data(TOY, setup.n_reference, generator=torch.Generator().manual_seed(data_seed + 1))
    sde = _sde(sde_name, train_x)
    hits = store.hits
    model, info = trained_score_model(store, f"score-{sde_name}-{TOY}", sde, train_x, setup.training, seed,
                                      hidden=setup.hidden)
    model.eval()
    eps = 1e-5 if sde_name == "ve" else 1e-3  # score_sde's sampling eps
    shape = (setup.n_eval, 2)

    samples = {}

    def run(method: str, steps: int = 1, **kw) -> dict:
        with torch.no_grad():
            out = sample(sde, model, shape, method=method, steps=steps, eps=eps,
                         generator=torch.Generator().manual_seed(seed + 17), **kw)
        samples.setdefault(method, out.x[:500].tolist())
        sw = float(sliced_wasserstein(out.x, reference, generator=torch.Generator().manual_seed(1)))
        return {"method": method, "steps": steps, "nfe": out.nfe, "sw2": sw if math.isfinite(sw) else float("inf"),
                "rtol": kw.get("rtol")}

    runs = [run("euler_maruyama", 1000), run("pc", setup.pc_steps), run("ode", rtol=1e-5, atol=1e-5)]
    result = {"sde": sde_name, "seed": seed, "runs": runs, "loaded": store.hits > hits,
              "final_loss": info.get("final_loss"), "samples_em": samples["euler_maruyama"],
              "samples_ode": samples["ode"]}
    if extras:  # the SW2-vs-NFE curve and the model's ODE NLL, on one seed per SDE
        fast = "heun" if sde_name == "ve" else "dpm_solver"
        for steps in setup.curve_steps:
            runs += [run("euler_maruyama", steps), run(fast, steps)]
        runs += [run("ode", rtol=tol, atol=tol) for tol in setup.curve_tols]
        # The trained model's ODE NLL on test points, beside the true mixture's log density there.
        test = toy_data(TOY, setup.n_nll, generator=torch.Generator().manual_seed(data_seed + 2))
        log_p, nll_nfe = log_likelihood(sde, model, test, generator=torch.Generator().manual_seed(seed + 23))
        mix = toy_mixture(TOY)
        true_log_p = GaussianMixture(mix.means, mix.stds, mix.weights).log_prob(test.double())
        result.update(nll=float(-log_p.mean()), nll_nfe=nll_nfe, true_nll=float(-true_log_p.mean()))
    return result


def gaussian_likelihood(n: int, seed: int) -> dict:
    """ODE log-likelihood of N(0, 0.5² I) data in 2-D under its exact VP score, against the closed form."""
    from ..diffusion.likelihood import log_likelihood
    from ..diffusion.mixture import GaussianMixture
    from ..diffusion.sde import VPSDE

    sde, s = VPSDE(), 0.5
    gauss = GaussianMixture(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([s], dtype=torch.float64))
    x = gauss.sample(n, generator=torch.Generator().manual_seed(seed))
    log_p, nfe = log_likelihood(sde, lambda y, t: gauss.score(y, t, sde), x,
                                generator=torch.Generator().manual_seed(seed + 1))
    exact = -x.shape[1] / 2 * math.log(2 * math.pi * s**2) - (x**2).sum(1) / (2 * s**2)
    err = (log_p - exact).abs()
    return {"max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()), "nfe": nfe, "n": n}


def exact_score_ode_nfe(n: int, seed: int) -> int:
    """RK45 evaluations of the probability-flow ODE (VP, 1e-5) on the 8 gaussians with their exact score:
    what the adaptive solver costs when the score is smooth, beside a trained network's."""
    from ..diffusion.data import toy_mixture
    from ..diffusion.samplers import sample
    from ..diffusion.sde import VPSDE

    sde = VPSDE()
    mix = toy_mixture(TOY, dtype=torch.float64).to_mixture()
    return sample(sde, mix.score_fn(sde), (n, 2), method="ode", dtype=torch.float64,
                  generator=torch.Generator().manual_seed(seed)).nfe


# --- the parts ---------------------------------------------------------------------------------------

def quality_plan(ctx: Context, setup: ToySetup, n_seeds: int, other_seeds: int) -> Plan:
    """Every model's training and sampling, one run per (sde, seed): VP over n_seeds decides."""
    jobs = [("vp", ctx.seed + 1000 * k) for k in range(n_seeds)]
    jobs += [(name, ctx.seed + 1000 * k) for name in setup.other_sdes for k in range(other_seeds)]
    counts = ctx.artifacts.counts()
    data_seed = ctx.seed + 7

    def finish(out: list) -> Part:
        ctx.artifacts.add_counts(counts, [r["loaded"] for r in out])
        reference_seed = data_seed + 1
        from ..diffusion.data import toy_data

        reference = toy_data(TOY, setup.n_reference, generator=torch.Generator().manual_seed(reference_seed))
        floor = noise_floor(reference, setup.n_eval, setup.floor_draws, seed=ctx.seed + 50_000)
        metrics: dict[str, float] = {"noise_floor_sw2": floor, "n_eval": setup.n_eval}
        checks: list[Check] = []
        by_sde = {name: [r for r in out if r["sde"] == name] for name in SDE_LABEL}
        rows = []
        for name, results in by_sde.items():
            if not results:
                continue
            for method, label in CLAIMED.items():
                ratios = [next(r for r in res["runs"] if r["method"] == method)["sw2"] / floor for res in results]
                nfes = [next(r for r in res["runs"] if r["method"] == method)["nfe"] for res in results]
                ci = mean_ci(ratios, statistic=f"{SDE_LABEL[name]} {label}: SW2 / noise floor")
                metrics[f"{name}_{method}_sw2_ratio"], metrics[f"{name}_{method}_nfe"] = ci.mean, float(np.mean(nfes))
                if ci.n > 1:
                    metrics[f"{name}_{method}_sw2_ratio_ci_high"] = ci.high
                rows.append([SDE_LABEL[name], label, f"{np.mean(nfes):.0f}", f"{ci.mean:.3f}",
                             f"[{ci.low:.3f}, {ci.high:.3f}]" if ci.n > 1 else "one seed", ci.n])
                if name == "vp":
                    checks.append(Check.ci_below(f"VP model, {label}: SW2 / noise floor (95% CI over seeds) <= {BOUND}",
                                                 ci, BOUND, label=f"{method} SW2/floor CI high"))
            with_nll = [r for r in results if "nll" in r]
            metrics[f"{name}_ode_nll"] = float(np.mean([r["nll"] for r in with_nll]))
            metrics[f"{name}_true_nll"] = float(np.mean([r["true_nll"] for r in with_nll]))
        vp = by_sde["vp"]
        ode_share = [next(r for r in res["runs"] if r["method"] == "ode")["nfe"] / 1000 for res in vp]
        share = mean_ci(ode_share, statistic="ODE NFE / reverse-SDE NFE (1000)")
        metrics["ode_nfe_share"], metrics["ode_nfe_share_ci_high"] = share.mean, share.high
        checks.append(Check.ci_below(f"probability-flow ODE evaluations / the reverse SDE's 1000 (95% CI) <= "
                                     f"{FAR_FEWER}", share, FAR_FEWER, label="ODE NFE share CI high"))
        nll_rows = [[SDE_LABEL[name], f"{metrics[f'{name}_ode_nll']:.3f}", f"{metrics[f'{name}_true_nll']:.3f}",
                     setup.n_nll] for name, res in by_sde.items() if res]
        tables = [Table(f"Samplers on {TOY}: SW2 of {setup.n_eval} samples to {setup.n_reference} reference points / noise floor "
                        f"{floor:.4f} (mean over seeds, 95% CI)",
                        ["SDE", "sampler", "NFE", "SW2 / floor", "95% CI", "n"], rows),
                  Table("Probability-flow ODE NLL (nats per point) of held-out points, seed-0 models, against the "
                        "true mixture's", ["SDE", "model NLL", "true NLL", "points"], nll_rows)]
        return Part(metrics, checks, tables, data={"out": out, "floor": floor, "reference": reference})

    runs = [(train_and_sample, (ctx.artifacts, name, seed, setup, data_seed, seed == ctx.seed))
            for name, seed in jobs]
    return Plan(runs, finish)


def likelihood_plan(ctx: Context) -> Plan:
    def finish(out: list) -> Part:
        r, exact_nfe = out
        metrics = {"gaussian_ode_max_abs_error": r["max_abs_error"], "gaussian_ode_mean_abs_error": r["mean_abs_error"],
                   "gaussian_ode_nfe": r["nfe"], "exact_score_ode_nfe": exact_nfe}
        check = Check("ODE log-likelihood of N(0, 0.5² I) data (exact VP score, RK45 1e-5): max |error| vs "
                      "the closed form, nats", r["max_abs_error"], "<=", 1e-3, label="Gaussian NLL max error")
        return Part(metrics, [check])

    return Plan([(gaussian_likelihood, (ctx.pick(200, 1000, tiny=16), ctx.seed + 99)),
                 (exact_score_ode_nfe, (ctx.pick(1000, 2000, tiny=16), ctx.seed + 98))], finish)


# --- plots -------------------------------------------------------------------------------------------

def plot_curves(ctx: Context, quality: Part) -> None:
    import matplotlib.pyplot as plt

    floor = quality.data["floor"]
    curves = [r for r in quality.data["out"] if r["seed"] == ctx.seed and r["sde"] in ("vp", "ve")]
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), constrained_layout=True, squeeze=False)
    for ax, res in zip(axes[0], curves):
        for method, marker in (("euler_maruyama", "o-"), ("dpm_solver", "s-"), ("heun", "^-"), ("ode", "D-"),
                               ("pc", "*")):
            pts = sorted((r["nfe"], r["sw2"] / floor) for r in res["runs"] if r["method"] == method)
            if pts:
                ax.plot(*zip(*pts), marker, label=method.replace("_", "-"))
        ax.axhline(1.0, color="grey", lw=1)
        ax.axhline(BOUND, color="red", ls="--", lw=1, label=f"{BOUND}x noise floor")
        ax.set(xscale="log", yscale="log", xlabel="score evaluations (NFE)", ylabel="SW2 / noise floor",
               title=f"{SDE_LABEL[res['sde']]} model (seed {res['seed']})")
        ax.legend(fontsize=8)
    ctx.save_figure(fig, "sw2-vs-nfe", f"Sample quality against score evaluations on {TOY}; ODE points are RK45 at "
                    "several tolerances; 1.0 is a perfect sampler (fresh data).")


def plot_samples(ctx: Context, quality: Part) -> None:
    import matplotlib.pyplot as plt

    panels = [("data", quality.data["reference"][:500].numpy())]
    for res in quality.data["out"]:
        if res["seed"] == ctx.seed:
            panels += [(f"{SDE_LABEL[res['sde']]} reverse SDE (EM)", np.asarray(res["samples_em"])),
                       (f"{SDE_LABEL[res['sde']]} ODE", np.asarray(res["samples_ode"]))]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8), constrained_layout=True)
    for ax, (title, x) in zip(np.atleast_1d(axes), panels):
        ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.6)
        ax.set(xlim=(-4.5, 4.5), ylim=(-4.5, 4.5), title=title, xticks=[], yticks=[])
        ax.set_aspect("equal")
        ax.title.set_fontsize(8)
    ctx.save_figure(fig, "samples", "500 samples per panel, seed-0 models; the data panel is the reference set.")


class ScoreSDE(NoteExperiment):
    slug = "score-sde"

    def measure(self, ctx: Context) -> Result:
        setup = toy_setup(ctx)
        n_seeds, other_seeds = ctx.pick(5, 8, tiny=2), ctx.pick(1, 3, tiny=1)
        quality, likelihood = run_plans([quality_plan(ctx, setup, n_seeds, other_seeds), likelihood_plan(ctx)],
                                        workers=ctx.pick(None, None, tiny=1))
        ctx.progress(0.9, "plots")
        plot_curves(ctx, quality)
        plot_samples(ctx, quality)
        m = {**quality.metrics, **likelihood.metrics}
        summary = (f"VP on {TOY}, {n_seeds} seeds: SW2/floor EM {m['vp_euler_maruyama_sw2_ratio']:.2f}, PC "
                   f"{m['vp_pc_sw2_ratio']:.2f}, ODE {m['vp_ode_sw2_ratio']:.2f} with {m['vp_ode_nfe']:.0f} NFE against "
                   f"1000 (the exact score: {m['exact_score_ode_nfe']:.0f} NFE); Gaussian ODE log-likelihood max error "
                   f"{m['gaussian_ode_max_abs_error']:.1e} nats.")
        return Result(metrics=m, checks=quality.checks + likelihood.checks, tables=quality.tables, summary=summary)

