r"""Note 11: FP16 / BF16 / FP32, loss scaling and master weights.

Measured here, on the digits CNN trained by deepnotes.train.fit (FP32 master
weights: the parameters stay fp32, only the compute is low precision):

* the format table derived from the bit layout, against torch.finfo;
* "tracks fp32", decided over seeds s = 1..n. Seed s fixes the initial weights
  and fit's data order for every precision, so the runs pair up by seed. With
  L_{p,s} the final training-set loss (evaluated in fp32) of precision p,

      d_{p,s} = L_{p,s} / L_{fp32,s} - 1                (paired relative difference)
      floor   = sd_s(L_{fp32,s}) / mean_s(L_{fp32,s})   (fp32's own seed-to-seed spread)

  and p tracks fp32 when the 95% interval of mean_s d_{p,s} lies in [-floor, floor]:
  the precision moves the loss by less than changing the seed does. p is bf16,
  and fp16 with fit's default scaler (torch's growth interval 2000);
* the share of nonzero fp32 gradients that become 0 in fp16, unscaled and after
  multiplying by the scale a dynamic scaler reached in the same seed's run: at a
  growth interval short enough for the scale to double eight times within the
  run (checked: only then does the scale adapt upwards), and at 2000 (reported:
  longer than the run, so the scale can only back off from 2^16);
* bf16 vs fp32 step time on this CPU (no threshold: a measurement).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..amp import FORMATS, DynamicLossScaler, float_info
from ..measure import interleaved_times
from ..train import fit
from .base import Check, Context, NoteExperiment, Part, Result, Table
from .digits import DigitsCNN, cross_entropy_loss, load_digits_split
from .parallel import map_runs
from .stats import Interval, mean_ci

__all__ = ["MixedPrecision", "fp16_underflow_fraction", "relative_spread", "paired_relative_differences",
           "suited_growth_interval", "format_rows", "train_run"]

FIELDS = ("max", "min_normal", "min_subnormal", "eps")
DEFAULT_GROWTH_INTERVAL = 2000  # torch.amp.GradScaler's, and DynamicLossScaler's
BATCH, LR, MOMENTUM = 64, 0.05, 0.9
UNDERFLOW_BOUND = 1e-3  # "almost none": the paper's x32K scale leaves 0.1% of SSD's gradients

# name -> (metric key, precision, scaler growth interval): "run" is suited_growth_interval(steps).
RUNS: dict[str, tuple[str, str, str | int | None]] = {
    "fp32": ("fp32", "fp32", None),
    "bf16": ("bf16", "bf16", None),
    "fp16 + scaler": ("fp16_scaler", "fp16", DEFAULT_GROWTH_INTERVAL),  # fit's default scaler
    "fp16 + scaler, short interval": ("fp16_scaler_short", "fp16", "run"),
}
DECIDED = ("bf16", "fp16 + scaler")  # the precisions the claim is about


# --- pure helpers ---------------------------------------------------------------------------------

def relative_spread(values) -> float:
    """sd / mean of `values` (sd with n - 1): the seed-to-seed spread as a fraction of the mean."""
    xs = np.asarray(values, dtype=float)
    if xs.size < 2:
        raise ValueError(f"relative_spread needs at least 2 values, got {xs.size}")
    return float(xs.std(ddof=1) / xs.mean())


def paired_relative_differences(losses, reference) -> list[float]:
    """d_s = losses[s] / reference[s] - 1, paired by seed."""
    if len(losses) != len(reference):
        raise ValueError(f"losses and reference must pair up by seed, got {len(losses)} and {len(reference)}")
    return [float(a) / float(b) - 1.0 for a, b in zip(losses, reference)]


def suited_growth_interval(steps: int, growths: int = 8) -> int:
    """The interval that lets a dynamic scaler double `growths` times within `steps` steps.

    Each doubling that overshoots costs one skipped step, so `growths` also bounds
    the skipped steps to about `growths` per run (7% of 114 steps, 2% of 380).
    """
    return max(1, steps // growths)


def fp16_underflow_fraction(values: torch.Tensor, scale: float = 1.0) -> float:
    """Share of the nonzero values that become 0 when (scale * value) is cast to fp16."""
    nonzero = values[values != 0].double()
    if nonzero.numel() == 0:
        return 0.0
    return float(((nonzero * scale).to(torch.float16) == 0).double().mean())


def _finfo_value(dtype: torch.dtype, field: str) -> float:
    fi = torch.finfo(dtype)
    if field == "min_subnormal":  # the next float after 0, by torch's own arithmetic
        return float(torch.nextafter(torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype)))
    return float({"max": fi.max, "min_normal": fi.smallest_normal, "eps": fi.eps}[field])


def format_rows() -> tuple[list[list[str]], float]:
    """(table rows, max relative difference of float_info's limits from torch.finfo's)."""
    rows, worst = [], 0.0
    for dtype in FORMATS:
        info = float_info(dtype)
        for name in FIELDS:
            ref = _finfo_value(dtype, name)
            worst = max(worst, abs(float(getattr(info, name)) - ref) / ref)
        rows.append([str(dtype).replace("torch.", ""), f"1/{info.exponent_bits}/{info.mantissa_bits}",
                     f"{info.min_subnormal:.4g}", f"{info.min_normal:.4g}", f"{info.max:.5g}", f"{info.eps:.4g}"])
    return rows, worst


# --- one training run (module level: map_runs sends it to a worker process) ------------------------

def _gradients(model: DigitsCNN, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight gradients, activation gradients) of one fp32 backward pass, flattened."""
    acts = []

    def keep(module, inputs, out):
        out.retain_grad()
        acts.append(out)

    handles = [m.register_forward_hook(keep)
               for m in list(model.features) + list(model.head) if isinstance(m, torch.nn.ReLU | torch.nn.Conv2d)]
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for h in handles:
        h.remove()
    weights = torch.cat([p.grad.flatten() for p in model.parameters()])
    activations = torch.cat([a.grad.flatten() for a in acts if a.grad is not None])
    return weights, activations


def train_run(precision: str, scaler: int | None, seed: int, steps: int,
              x: torch.Tensor, y: torch.Tensor) -> dict:
    """Trains DigitsCNN on (x, y) under `precision`; `seed` fixes the initial weights and the data order.

    scaler (fp16 only): the growth interval of its DynamicLossScaler.
    fp32 runs also return the gradients on the first batch at initialisation and after training.
    """
    model = DigitsCNN(generator=torch.Generator().manual_seed(seed))
    out: dict = {}
    if precision == "fp32":
        out["grads_init"] = _gradients(model, x[:BATCH], y[:BATCH])
    amp_scaler = DynamicLossScaler(growth_interval=int(scaler)) if precision == "fp16" else None
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    data = torch.utils.data.TensorDataset(x, y)
    try:
        res = fit(model, opt, data, cross_entropy_loss, max_steps=steps, batch_size=BATCH, seed=seed,
                  precision=precision, scaler=amp_scaler, progress=False)
        out.update(losses=res.losses, scale=res.scale, skipped=res.skipped_steps)
        with torch.no_grad():
            out["final"] = float(torch.nn.functional.cross_entropy(model(x), y))
    except FloatingPointError:
        out.update(losses=[], scale=None, skipped=0, final=math.nan)
    if precision == "fp32":
        out["grads_trained"] = _gradients(model, x[:BATCH], y[:BATCH])
    return out


# --- the parts ------------------------------------------------------------------------------------

def format_part() -> Part:
    rows, worst = format_rows()
    table = Table("Float formats derived from the bit layout",
                  ["format", "sign/exp/mantissa", "min subnormal", "min normal", "max", "eps"], rows)
    check = Check("format table from bits == torch.finfo (max relative difference)", worst, "<=", 0.0,
                  label="formats vs finfo")
    return Part({"format_table_max_rel_diff_vs_finfo": worst}, [check], [table])


def train_all(seeds: list[int], steps: int, growth_interval: int, split_seed: int) -> dict[str, list[dict]]:
    """Every run of RUNS for every seed, through map_runs; {name: [run of seed s for s in seeds]}."""
    x, y = load_digits_split(seed=split_seed)[0].tensors
    jobs = [(name, precision, growth_interval if scaler == "run" else scaler, s)
            for name, (_, precision, scaler) in RUNS.items() for s in seeds]
    jobs.sort(key=lambda job: job[1] != "fp16")  # the slow fp16 runs first, for balance
    outs = map_runs(train_run, [(p, sc, s, steps, x, y) for _, p, sc, s in jobs])
    runs: dict[str, list[dict]] = {name: [None] * len(seeds) for name in RUNS}
    for (name, _, _, s), out in zip(jobs, outs):
        runs[name][seeds.index(s)] = out
    return runs


def tracking_part(runs: dict[str, list[dict]], seeds: list[int]) -> tuple[Part, dict[str, Interval], float]:
    ref = [r["final"] for r in runs["fp32"]]
    floor = relative_spread(ref)
    part = Part({"fp32_final_loss_mean": float(np.mean(ref)), "fp32_seed_relative_spread": floor})
    intervals, rows = {}, []
    for name in RUNS:
        if name == "fp32":
            continue
        key = RUNS[name][0]
        d = paired_relative_differences([r["final"] for r in runs[name]], ref)
        ci = intervals[name] = mean_ci(d, statistic=f"{name} final loss / fp32's - 1, paired by seed")
        part.metrics.update({f"{key}_final_loss_mean": float(np.mean([r["final"] for r in runs[name]])),
                             f"{key}_rel_diff_mean": ci.mean, f"{key}_rel_diff_ci_low": ci.low,
                             f"{key}_rel_diff_ci_high": ci.high})
        rows.append([name, f"{ci.mean:+.2%}", f"[{ci.low:+.2%}, {ci.high:+.2%}]",
                     f"{max(abs(ci.low), abs(ci.high)):.2%}", f"{floor:.2%}", "check" if name in DECIDED else "—"])
        if name in DECIDED:
            what = name + (" (fit's default scaler, growth interval 2000)" if name == "fp16 + scaler" else "")
            part.checks.append(Check.ci_within(
                f"{what}: final loss tracks fp32's (95% CI of mean L/L_fp32 - 1 over seeds) within fp32's "
                "seed-to-seed spread sd/mean", ci, bound=floor, label=f"{name} vs fp32 loss"))
    part.tables.append(Table(f"Final loss vs fp32, paired by seed (n = {len(seeds)}; bound: fp32's sd/mean)",
                             ["run", "mean d", "95% CI", "max |CI|", "bound", ""], rows))
    part.tables.append(Table("Final training loss per seed (fp32 evaluation)", ["seed", *RUNS],
                             [[s, *(f"{runs[n][i]['final']:.4f}" for n in RUNS)] for i, s in enumerate(seeds)]))
    return part, intervals, floor


def underflow_part(runs: dict[str, list[dict]], growth_interval: int) -> Part:
    """Underflow of each seed's fp32 gradients (at init and after training, weights and activations),
    unscaled and at the final scale of the same seed's fp16 run at each growth interval."""
    scalers = {"short": (runs["fp16 + scaler, short interval"], growth_interval),
               "default": (runs["fp16 + scaler"], DEFAULT_GROWTH_INTERVAL)}
    per_seed: dict[str, list[float]] = {"unscaled": [], "short": [], "default": []}
    kinds: dict[tuple[str, str], dict[str, list[float]]] = {}
    for i, r in enumerate(runs["fp32"]):
        scales = {"unscaled": 1.0, **{k: float(v[0][i]["scale"]) for k, v in scalers.items()}}
        groups = {("init", "weights"): r["grads_init"][0], ("init", "activations"): r["grads_init"][1],
                  ("trained", "weights"): r["grads_trained"][0], ("trained", "activations"): r["grads_trained"][1]}
        pooled = torch.cat(list(groups.values()))
        for k, scale in scales.items():
            per_seed[k].append(fp16_underflow_fraction(pooled, scale))
            for g, values in groups.items():
                kinds.setdefault(g, {}).setdefault(k, []).append(fp16_underflow_fraction(values, scale))
    ci = {k: mean_ci(v, statistic="share of nonzero gradients lost in fp16") for k, v in per_seed.items()}
    part = Part()
    for k, c in ci.items():
        part.metrics.update({f"underflow_all_{k}_mean": c.mean, f"underflow_all_{k}_ci_high": c.high})
    for k, (rs, interval) in scalers.items():
        scales = [r["scale"] for r in rs]
        part.metrics.update({f"fp16_scaler_{k}_growth_interval": interval,
                             f"fp16_scaler_{k}_final_scale_min": min(scales),
                             f"fp16_scaler_{k}_final_scale_max": max(scales),
                             f"fp16_scaler_{k}_skipped_steps_mean": float(np.mean([r["skipped"] for r in rs]))})
    part.checks.append(Check.ci_above("fraction of nonzero gradients that underflow in fp16 without scaling "
                                      "(95% CI over seeds above 0)", ci["unscaled"], 0.0, label="underflow unscaled"))
    part.checks.append(Check.ci_below(
        f"fraction that underflow at the scale a dynamic scaler reached (growth interval {growth_interval}, "
        "suited to the run's length; 95% CI over seeds)", ci["short"], UNDERFLOW_BOUND, label="underflow scaled"))
    rows = [[when, kind, *(f"{np.mean(v[k]):.4%}" for k in per_seed)] for (when, kind), v in kinds.items()]
    rows.append(["all (checked)", "both", *(f"{c.mean:.4%} [{c.low:.4%}, {c.high:.4%}]" for c in ci.values())])
    scale_text = {k: "/".join(f"{r['scale']:g}" for r in rs) for k, (rs, _) in scalers.items()}
    part.tables.append(Table(
        f"Nonzero fp32 gradients lost in fp16 (mean over seeds; final scales per seed: interval {growth_interval}: "
        f"{scale_text['short']}; interval 2000: {scale_text['default']})",
        ["model", "gradients", "unscaled", f"scaled, interval {growth_interval}", "scaled, interval 2000"], rows))
    return part


def _train_step(model, opt, x, y, dtype) -> None:
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def step_time_part(ctx: Context) -> Part:
    """fp32 vs bf16-autocast training step of a wider CNN, timed interleaved (deepnotes.measure)."""
    batch = ctx.pick(256, 256, tiny=32)
    g = ctx.generator(offset=10_000)
    x, y = torch.rand(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g)
    fns = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model = DigitsCNN(width=32, hidden=256, generator=ctx.generator(offset=10_001))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        fns[name] = lambda model=model, opt=opt, dtype=dtype: _train_step(model, opt, x, y, dtype)
    t = interleaved_times(fns, repeats=ctx.pick(5, 15, tiny=1), warmup=1)
    metrics = {"step_ms_fp32": 1e3 * t["fp32"], "step_ms_bf16": 1e3 * t["bf16"],
               "bf16_speed_vs_fp32": t["fp32"] / t["bf16"]}
    table = Table(f"Step time on this CPU (CNN width 32, batch {batch}, 1 thread, interleaved medians)",
                  ["precision", "ms / step"], [["fp32", f"{1e3 * t['fp32']:.2f}"],
                                               ["bf16 autocast", f"{1e3 * t['bf16']:.2f}"]])
    return Part(metrics, [], [table])


# --- figures --------------------------------------------------------------------------------------

def plot_tracking(ctx: Context, runs, intervals: dict[str, Interval], floor: float) -> None:
    import matplotlib.pyplot as plt

    ref = [r["final"] for r in runs["fp32"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.axhspan(-floor, floor, color="0.85", label="± fp32 seed-to-seed sd/mean")
    for i, (name, ci) in enumerate(intervals.items()):
        d = paired_relative_differences([r["final"] for r in runs[name]], ref)
        ax.plot([i] * len(d), d, "o", color="0.5", ms=3)
        ax.errorbar([i + 0.15], [ci.mean], yerr=[[ci.mean - ci.low], [ci.high - ci.mean]], fmt="s", capsize=4)
    ax.set_xticks(range(len(intervals)), list(intervals), fontsize=7)
    ax.set(ylabel="L / L_fp32 - 1 (final loss)", title="Precision vs fp32, paired by seed")
    ax.legend(fontsize=7)
    ctx.save_figure(fig, "tracking", "Dots: each seed's final loss relative to fp32's; squares: mean and 95% CI; "
                                     "band: fp32's own seed-to-seed spread, the bound of the checks.")


def plot_gradients(ctx: Context, runs, growth_interval: int) -> None:
    import matplotlib.pyplot as plt

    fp16 = float_info(torch.float16)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for kind, g in zip(("weights", "activations"), runs["fp32"][0]["grads_trained"]):
        ax.hist(torch.log2(g[g != 0].abs().double()).numpy(), bins=80, alpha=0.6, label=f"{kind} gradients")
    for v, lab in ((fp16.min_subnormal, "fp16 min subnormal"), (fp16.min_normal, "fp16 min normal")):
        ax.axvline(math.log2(v), color="r", ls="--", lw=1)
        ax.text(math.log2(v), ax.get_ylim()[1] * 0.55, lab, rotation=90, fontsize=7, ha="right")
    for name, ls, interval in (("fp16 + scaler, short interval", ":", growth_interval), ("fp16 + scaler", "-.", 2000)):
        scale = runs[name][0]["scale"]
        ax.axvline(math.log2(fp16.min_subnormal / scale), color="g", ls=ls, lw=1.5,
                   label=f"limit at scale {scale:g} (interval {interval})")
    ax.set(xlabel="log2 |gradient| (fp32, nonzero)", ylabel="count", title="Gradient magnitudes vs fp16 range")
    ax.legend(fontsize=7)
    ctx.save_figure(fig, "gradient-histogram", "Per-element gradients of the trained CNN (first seed, batch of 64); "
                                               "left of a line is lost in fp16.")


def plot_losses(ctx: Context, runs) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, rs in runs.items():
        curves = [r["losses"] for r in rs if r["losses"]]
        if curves:
            med = np.median(np.array([c[: min(map(len, curves))] for c in curves]), axis=0)
            ax.plot(np.convolve(med, np.ones(5) / 5, mode="valid"), label=name)
    for r in runs["fp32"]:
        ax.plot(np.convolve(r["losses"], np.ones(5) / 5, mode="valid"), color="0.6", lw=0.5)
    ax.set(xlabel="step", ylabel="training loss (5-step mean)", yscale="log", title="Median over seeds")
    ax.legend(fontsize=7)
    ctx.save_figure(fig, "loss-curves", "fit() under each precision, median over seeds; grey: each fp32 seed.")


class MixedPrecision(NoteExperiment):
    slug = "mixed-precision"
    single_threaded = True  # small models: one thread is faster and core-count independent

    def measure(self, ctx: Context) -> Result:
        # A seed costs about 5 s of quick wall time on 2 cores (its two fp16 runs dominate): with 5 seeds
        # the quick run takes about 39 s of its 45 s budget.
        seeds = [ctx.seed + s for s in range(1, ctx.pick(5, 8, tiny=2) + 1)]
        steps_per_epoch = len(load_digits_split(seed=ctx.seed)[0]) // BATCH
        steps = ctx.pick(6 * steps_per_epoch, 20 * steps_per_epoch, tiny=10)  # 6 or 20 epochs
        growth_interval = suited_growth_interval(steps)
        runs = train_all(seeds, steps, growth_interval, split_seed=ctx.seed)
        ctx.progress(0.8, "trained")
        tracking, intervals, floor = tracking_part(runs, seeds)
        parts = [format_part(), tracking, underflow_part(runs, growth_interval), step_time_part(ctx)]
        plot_tracking(ctx, runs, intervals, floor)
        plot_gradients(ctx, runs, growth_interval)
        plot_losses(ctx, runs)
        m = {"seeds": len(seeds), "steps": steps, **{k: v for p in parts for k, v in p.metrics.items()}}
        vs = ", ".join(f"{n} {c.mean:+.1%} [{c.low:+.1%}, {c.high:+.1%}]" for n, c in intervals.items() if n in DECIDED)
        summary = (f"Final loss vs fp32 over {len(seeds)} seeds: {vs}, against fp32's own seed-to-seed spread "
                   f"±{floor:.1%}. fp16 loses {m['underflow_all_unscaled_mean']:.2%} of nonzero gradients unscaled, "
                   f"{m['underflow_all_short_mean']:.4%} with a dynamic scaler at growth interval {growth_interval} "
                   f"({m['underflow_all_default_mean']:.4%} at 2000). bf16 runs at {m['bf16_speed_vs_fp32']:.2f}x "
                   "fp32's step speed on this CPU.")
        return Result(metrics=m, checks=[c for p in parts for c in p.checks],
                      tables=[t for p in parts for t in p.tables], summary=summary)
