"""Note 11: FP16 / BF16 / FP32, loss scaling and master weights.

Measured here:
* the format table derived from the bit layout, against torch.finfo;
* on a CNN trained on sklearn digits, the fraction of nonzero FP32 gradients
  (weights and activations) that become 0 when cast to FP16 as they are, and
  after multiplying by the scale the dynamic loss scaler settled on;
* loss curves of the same model and seed under fp32, bf16 autocast,
  fp16 autocast + DynamicLossScaler and fp16 without a scaler, all through
  deepnotes.train.fit, with FP32 master weights (the parameters stay fp32);
* the final training-set loss (evaluated in fp32) of each, relative to fp32's;
* bf16 vs fp32 step time on this CPU (no threshold: a measurement).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..amp import FORMATS, DynamicLossScaler, float_info
from ..train import fit
from .base import Check, Context, NoteExperiment, Result, Table
from .digits import DigitsCNN, cross_entropy_loss, load_digits_split

__all__ = ["MixedPrecision", "fp16_underflow_fraction"]

FIELDS = ("max", "min_normal", "min_subnormal", "eps")


def _finfo_value(dtype: torch.dtype, field: str) -> float:
    fi = torch.finfo(dtype)
    if field == "min_subnormal":  # the next float after 0, by torch's own arithmetic
        return float(torch.nextafter(torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype)))
    return float({"max": fi.max, "min_normal": fi.smallest_normal, "eps": fi.eps}[field])


def fp16_underflow_fraction(values: torch.Tensor, scale: float = 1.0) -> float:
    """Share of the nonzero values that become 0 when (scale * value) is cast to fp16."""
    nonzero = values[values != 0].double()
    if nonzero.numel() == 0:
        return 0.0
    return float(((nonzero * scale).to(torch.float16) == 0).double().mean())


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


def _final_loss(model, data) -> float:
    with torch.no_grad():
        x, y = data.tensors
        return float(torch.nn.functional.cross_entropy(model(x), y))


def _step_time(precision: str, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model = DigitsCNN(width=32, hidden=256)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, 1, 8, 8)
    y = torch.randint(0, 10, (batch,))
    dtype = torch.bfloat16 if precision == "bf16" else None
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


class MixedPrecision(NoteExperiment):
    slug = "mixed-precision"
    single_threaded = True  # small models: one thread is faster and core-count independent

    def measure(self, ctx: Context) -> Result:
        import matplotlib.pyplot as plt

        metrics: dict[str, float] = {}
        checks: list[Check] = []

        # 1. Formats from bits vs torch.finfo.
        rows, worst = [], 0.0
        for dtype in FORMATS:
            info = float_info(dtype)
            for field in FIELDS:
                ours, ref = float(getattr(info, field)), _finfo_value(dtype, field)
                worst = max(worst, abs(ours - ref) / ref)
            rows.append([str(dtype).replace("torch.", ""), f"1/{info.exponent_bits}/{info.mantissa_bits}",
                         f"{info.min_subnormal:.4g}", f"{info.min_normal:.4g}", f"{info.max:.5g}", f"{info.eps:.4g}"])
        metrics["format_table_max_rel_diff_vs_finfo"] = worst
        checks.append(Check("format table from bits == torch.finfo (max relative difference)", worst, "<=", 0.0))
        format_table = Table("Float formats derived from the bit layout",
                             ["format", "sign/exp/mantissa", "min subnormal", "min normal", "max", "eps"], rows)
        ctx.progress(0.05, "formats")

        # 2. Loss curves under each precision, same init, same data order.
        train, test = load_digits_split(seed=ctx.seed)
        epochs = ctx.pick(6, 20)
        steps = epochs * (len(train) // 64)
        runs = {}
        for k, (name, precision, scaler) in enumerate([
            ("fp32", "fp32", None), ("bf16", "bf16", None),
            ("fp16 + scaler", "fp16", DynamicLossScaler()), ("fp16, no scaler", "fp16", DynamicLossScaler(enabled=False)),
        ]):
            torch.manual_seed(ctx.seed)
            model = DigitsCNN()
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            try:
                res = fit(model, opt, train, cross_entropy_loss, max_steps=steps, batch_size=64, seed=ctx.seed,
                          precision=precision, scaler=scaler, progress=False)
                runs[name] = {"losses": res.losses, "final": _final_loss(model, train),
                              "scale": res.scale, "skipped": res.skipped_steps, "model": model}
            except FloatingPointError as err:
                runs[name] = {"losses": [], "final": math.nan, "scale": None, "skipped": 0, "error": str(err)}
            ctx.progress(0.1 + 0.15 * (k + 1), f"training {name}")
        ref = runs["fp32"]["final"]
        # The noise floor of "final loss": fp32 itself with another data order.
        torch.manual_seed(ctx.seed)
        model = DigitsCNN()
        fit(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), train, cross_entropy_loss,
            max_steps=steps, batch_size=64, seed=ctx.seed + 1, progress=False)
        metrics["fp32_other_data_order_final_loss_rel_diff"] = abs(_final_loss(model, train) / ref - 1)
        for name in ("bf16", "fp16 + scaler", "fp16, no scaler"):
            key = name.replace(" + ", "_").replace(", no ", "_no_").replace(" ", "_")
            metrics[f"{key}_final_loss"] = runs[name]["final"]
            metrics[f"{key}_final_loss_rel_diff"] = abs(runs[name]["final"] / ref - 1)
        metrics["fp32_final_loss"] = ref
        metrics["fp16_scaler_final_scale"] = runs["fp16 + scaler"]["scale"]
        metrics["fp16_scaler_skipped_steps"] = runs["fp16 + scaler"]["skipped"]
        for name in ("bf16", "fp16 + scaler"):
            key = name.replace(" + ", "_")
            checks.append(Check(f"{name}: final loss within 2% of fp32's (|L/L_fp32 - 1|)",
                                metrics[f"{key}_final_loss_rel_diff"], "<=", 0.02))

        # 3. Gradient underflow: fp32 gradients of the fp32 run's model, cast to fp16.
        scale = float(runs["fp16 + scaler"]["scale"] or 2.0**16)
        x, y = train.tensors
        torch.manual_seed(ctx.seed)
        fresh = DigitsCNN()
        grad_sets = {"initialisation": _gradients(fresh, x[:64], y[:64]),
                     "after training": _gradients(runs["fp32"]["model"], x[:64], y[:64])}
        under_rows = []
        for when, (gw, ga) in grad_sets.items():
            for kind, g in (("weights", gw), ("activations", ga)):
                plain, scaled = fp16_underflow_fraction(g), fp16_underflow_fraction(g, scale)
                under_rows.append([when, kind, f"{plain:.4%}", f"{scaled:.4%}"])
                tag = f"{'init' if when == 'initialisation' else 'trained'}_{kind}"
                metrics[f"underflow_{tag}_unscaled"] = plain
                metrics[f"underflow_{tag}_scaled"] = scaled
        all_g = torch.cat([g for pair in grad_sets.values() for g in pair])
        unscaled_all, scaled_all = fp16_underflow_fraction(all_g), fp16_underflow_fraction(all_g, scale)
        metrics["underflow_all_unscaled"], metrics["underflow_all_scaled"] = unscaled_all, scaled_all
        checks.append(Check("fraction of nonzero gradients that underflow in fp16 without scaling",
                            unscaled_all, ">", 0.0))
        checks.append(Check(f"fraction that underflow with the scaler's scale ({scale:g})", scaled_all, "<=", 1e-3))
        ctx.progress(0.8, "underflow")

        # 4. bf16 vs fp32 step time on this CPU.
        n_time = ctx.pick(10, 40)
        t32, t16 = _step_time("fp32", n_time, 256), _step_time("bf16", n_time, 256)
        metrics["step_ms_fp32"], metrics["step_ms_bf16"] = 1e3 * t32, 1e3 * t16
        metrics["bf16_speedup_over_fp32"] = t32 / t16

        # Figures.
        fp16 = float_info(torch.float16)
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for kind, g in (("weights", grad_sets["after training"][0]), ("activations", grad_sets["after training"][1])):
            a = g[g != 0].abs().double()
            ax.hist(torch.log2(a).numpy(), bins=80, alpha=0.6, label=f"{kind} gradients")
        for v, lab in ((fp16.min_subnormal, "fp16 min subnormal"), (fp16.min_normal, "fp16 min normal")):
            ax.axvline(math.log2(v), color="r", ls="--", lw=1)
            ax.text(math.log2(v), ax.get_ylim()[1] * 0.9, lab, rotation=90, fontsize=7, ha="right")
        ax.axvline(math.log2(fp16.min_subnormal / scale), color="g", ls=":", lw=1.5,
                   label=f"underflow limit with scale {scale:g}")
        ax.set(xlabel="log2 |gradient| (fp32, nonzero)", ylabel="count", title="Gradient magnitudes vs fp16 range")
        ax.legend(fontsize=7)
        ctx.save_figure(fig, "gradient-histogram", "Per-element gradient magnitudes of the trained CNN (batch of 64); "
                                                   "left of a red line is lost in fp16.")
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for name, r in runs.items():
            if r["losses"]:
                ls = np.convolve(r["losses"], np.ones(10) / 10, mode="valid")
                ax.plot(ls, label=f"{name} (final {r['final']:.4f})")
        ax.set(xlabel="step", ylabel="training loss (10-step mean)", yscale="log", title="Same model and seed")
        ax.legend(fontsize=8)
        ctx.save_figure(fig, "loss-curves", "fit() under each precision; final = fp32 evaluation on the training set.")
        ctx.progress(1.0, "done")

        train_rows = [[n, f"{r['final']:.5f}", f"{abs(r['final'] / ref - 1):.2%}" if n != "fp32" else "—",
                       "—" if r["scale"] is None else f"{r['scale']:g}", r["skipped"]] for n, r in runs.items()]
        return Result(
            metrics=metrics,
            checks=checks,
            tables=[format_table,
                    Table("Training under each precision", ["run", "final loss", "vs fp32", "final scale",
                                                            "skipped steps"], train_rows),
                    Table(f"Nonzero gradients lost in fp16 (scale {scale:g})", ["model", "gradients", "unscaled",
                                                                                "scaled"], under_rows),
                    Table("Step time on this CPU (CNN, batch 256)", ["precision", "ms / step"],
                          [["fp32", f"{1e3 * t32:.2f}"], ["bf16 autocast", f"{1e3 * t16:.2f}"]])],
            summary=(f"fp16 loses {unscaled_all:.3%} of nonzero gradients unscaled and {scaled_all:.3%} at scale "
                     f"{scale:g}; final loss vs fp32: bf16 {metrics['bf16_final_loss_rel_diff']:.2%}, fp16+scaler "
                     f"{metrics['fp16_scaler_final_loss_rel_diff']:.2%} (fp32 with another data order: "
                     f"{metrics['fp32_other_data_order_final_loss_rel_diff']:.2%}); bf16 step time is "
                     f"{t32 / t16:.2f}x fp32's speed on this CPU."),
        )
