"""Note 7: upsampling — interpolation, pixel shuffle, transposed convolution.

Three measurements, each a pure function below returning its metrics, checks
and table; ``Upsampling.measure`` composes them:

* ``parity``: every operator of deepnotes.nn.upsampling against torch's on
  random float32 inputs (all interpolation modes, both align_corners,
  non-integer scales; pixel (un)shuffle; transposed convolution with stride,
  padding, output_padding, dilation and groups; max unpooling): the largest
  absolute difference must be <= 1e-5, the float32 tolerance of the tests;
* ``checkerboard_at_init``: each x2 layer (16 -> 16 channels, torch's default
  init drawn from a seeded generator, float64) maps a constant image; the
  checkerboard index is the share of the output's energy at the stride
  frequencies (0, pi), (pi, 0), (pi, pi),

      index = (|Y(0, pi)|^2 + |Y(pi, 0)|^2 + |Y(pi, pi)|^2) / sum |Y|^2,   Y = FFT2(y),

  on the interior (2 pixels cropped), averaged over channels and seeds.
  Transposed convolution with k = 3, s = 2 must show >= 1% there;
  resize-convolution and ICNR sub-pixel convolution <= 1e-8 (zero up to
  rounding). k = 4, s = 2 and sub-pixel without ICNR are reported beside them;
* ``super_resolution``: learned x2 super-resolution of the digits (the 8x8
  images rendered at 32x32 as ink squares under a Gaussian blur,
  area-downsampled to 16x16): PSNR of nearest, bilinear and bicubic
  interpolation and of the same small CNN with a transposed-conv, resize-conv
  or ICNR sub-pixel upsampler. Each learned upsampler must beat the best fixed
  interpolation.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import upsampling as U
from ..nn.init import rng_scope
from ..optim import AdamW
from ..optim.schedules import set_lr, warmup_cosine
from .base import Check, Context, NoteExperiment, Result, Table
from .digits import load_digits_tensors

__all__ = ["Upsampling", "parity", "checkerboard_index", "checkerboard_at_init", "make_upsampler",
           "render_digits", "digits_sr_data", "psnr", "SRNet", "train_sr", "super_resolution"]

LAYERS = ["tconv k3 s2", "tconv k4 s2", "resize-conv", "sub-pixel ICNR", "sub-pixel (no ICNR)"]
LEARNED = ["tconv k4 s2", "resize-conv", "sub-pixel ICNR"]
FIXED = ["nearest", "bilinear", "bicubic"]


def _key(name: str) -> str:
    """A metric name from a label: 'sub-pixel (no ICNR)' -> 'sub_pixel_no_icnr'."""
    return "_".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


# --- 1. parity with torch -----------------------------------------------------------------------------

def parity_errors(generator: torch.Generator) -> dict[str, float]:
    """Largest |ours - torch| per operator family on random float32 inputs."""
    errors: dict[str, float] = {}

    def record(name, ours, theirs):
        errors[name] = max(errors.get(name, 0.0), float((ours - theirs).abs().max()))

    x1, x2, x3 = (torch.randn(2, 3, *s, generator=generator) for s in ((11,), (9, 7), (5, 6, 4)))
    for x, modes in ((x1, ["linear"]), (x2, ["bilinear", "bicubic"]), (x3, ["trilinear"])):
        for mode in modes + ["nearest", "nearest-exact", "area"]:
            for kw in (dict(scale_factor=2.0), dict(scale_factor=1.7), dict(scale_factor=0.6),
                       dict(size=[n + 4 for n in x.shape[2:]]), dict(scale_factor=1.5, recompute_scale_factor=True)):
                for align in ((False, True) if mode in modes else (None,)):
                    args = dict(kw, mode=mode, align_corners=align)
                    record(f"interpolate {mode}", U.interpolate(x, **args), F.interpolate(x, **args))
    xs = torch.randn(2, 12, 5, 7, generator=generator)
    record("pixel_shuffle", U.pixel_shuffle(xs, 2), F.pixel_shuffle(xs, 2))
    record("pixel_unshuffle", U.pixel_unshuffle(xs[:, :, :4, :6], 2), F.pixel_unshuffle(xs[:, :, :4, :6], 2))
    w = torch.randn(12, 3, 3, 4, generator=generator)
    for kw in (dict(stride=2), dict(stride=2, padding=1, output_padding=1), dict(stride=(3, 2), dilation=2, groups=2),
               dict(stride=2, padding=(1, 2), output_padding=(1, 0), groups=2)):
        b = torch.randn(3 * kw.get("groups", 1), generator=generator)
        record("conv_transpose2d", U.conv_transpose2d(xs, w, b, **kw), F.conv_transpose2d(xs, w, b, **kw))
    pooled, idx = F.max_pool2d(xs, 2, 2, return_indices=True)
    record("max_unpool2d", U.max_unpool2d(pooled, idx, 2, output_size=xs.shape[-2:]),
           F.max_unpool2d(pooled, idx, 2, output_size=xs.shape[-2:]))
    return errors


def parity(generator: torch.Generator):
    """(metrics, checks, table) of the worst |ours - torch| over every operator."""
    errors = parity_errors(generator)
    worst = max(errors.values())
    check = Check("every operator vs torch, float32: max |ours - torch|", worst, "<=", 1e-5, label="parity vs torch")
    table = Table("Parity with torch (float32, random inputs)", ["operator", "max |ours - torch|"],
                  [[k, f"{v:.2e}"] for k, v in errors.items()])
    return {"parity_max_abs_error": worst}, [check], table


# --- 2. checkerboard at initialisation -------------------------------------------------------------------

def make_upsampler(kind: str, c_in: int, c_out: int, generator: torch.Generator) -> nn.Module:
    """An x2 layer (N, c_in, H, W) -> (N, c_out, 2H, 2W) with torch's default init drawn from `generator`."""
    if kind not in LAYERS:
        raise ValueError(f"make_upsampler: unknown kind {kind!r}; expected one of {LAYERS}")
    with rng_scope(generator):
        if kind == "tconv k3 s2":
            layer = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)
        elif kind == "tconv k4 s2":
            layer = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)
        elif kind == "resize-conv":
            layer = U.ResizeConv2d(c_in, c_out, scale=2)
        else:
            layer = U.SubPixelConv2d(c_in, c_out, scale=2, icnr=False)
    if kind == "sub-pixel ICNR":
        with torch.no_grad():
            U.icnr_(layer.conv.weight, 2, generator=generator)
            layer.conv.bias.copy_(layer.conv.bias[::4].repeat_interleave(4))  # one bias per output channel
    return layer


def checkerboard_index(y: torch.Tensor, crop: int = 2) -> float:
    """Share of the energy at the stride-2 frequencies, interior of (N, C, H, W), mean over N and C."""
    y = y[..., crop: y.shape[-2] - crop, crop: y.shape[-1] - crop]
    h, w = y.shape[-2:]
    y = y[..., : h - h % 2, : w - w % 2]  # even sides, so that pi is a frequency bin
    h, w = y.shape[-2:]
    spec = torch.fft.fft2(y.double()).abs() ** 2  # (N, C, h, w)
    stride = spec[..., 0, w // 2] + spec[..., h // 2, 0] + spec[..., h // 2, w // 2]
    total = spec.sum(dim=(-2, -1)).clamp_min(1e-300)
    return float((stride / total).mean())


def checkerboard_at_init(seeds: int, generator: torch.Generator, channels: int = 16, size: int = 16):
    """Mean checkerboard index of each randomly initialised layer on a constant and a smooth input.

    Returns (metrics, checks, table, examples): examples maps a layer to one output channel on the
    constant input (first seed).
    """
    flat = torch.ones(1, channels, size, size, dtype=torch.float64)
    index = {k: {"constant": 0.0, "smooth": 0.0} for k in LAYERS}
    examples = {}
    for s in range(seeds):
        coarse = torch.randn(1, channels, 4, 4, generator=generator, dtype=torch.float64)
        smooth = U.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
        for k in LAYERS:
            layer = make_upsampler(k, channels, channels, generator).double()
            with torch.no_grad():
                y_flat, y_smooth = layer(flat), layer(smooth)
            index[k]["constant"] += checkerboard_index(y_flat) / seeds
            index[k]["smooth"] += checkerboard_index(y_smooth) / seeds
            if s == 0:
                examples[k] = y_flat[0, 0]
    metrics = {f"checkerboard_{_key(k)}": index[k]["constant"] for k in LAYERS}
    metrics.update({f"checkerboard_smooth_{_key(k)}": index[k]["smooth"] for k in LAYERS})
    checks = [
        Check("transposed conv k=3, s=2: checkerboard index on a constant input", index["tconv k3 s2"]["constant"],
              ">=", 0.01, label="tconv k3s2 checkerboard"),
        Check("resize-conv: checkerboard index on a constant input", index["resize-conv"]["constant"], "<=", 1e-8,
              label="resize-conv checkerboard"),
        Check("ICNR sub-pixel conv: checkerboard index on a constant input", index["sub-pixel ICNR"]["constant"],
              "<=", 1e-8, label="ICNR sub-pixel checkerboard"),
    ]
    table = Table(f"Checkerboard index at initialisation (mean of {seeds} seeds)",
                  ["layer", "constant input", "smooth input"],
                  [[k, f"{index[k]['constant']:.3e}", f"{index[k]['smooth']:.3e}"] for k in LAYERS])
    return metrics, checks, table, examples


# --- 3. learned x2 super-resolution on digits -------------------------------------------------------------

def render_digits(scale: int = 4, sigma: float = 1.0) -> torch.Tensor:
    """The 8x8 digits as ink squares seen through a Gaussian blur: (1797, 1, 8 scale, 8 scale) in [0, 1].

    Made neither by nearest, bilinear nor bicubic interpolation, so none of the compared fixed
    methods is the exact inverse of how the high-resolution images were made.
    """
    x, _ = load_digits_tensors()  # (1797, 1, 8, 8) in [0, 1]
    squares = U.interpolate(x, scale_factor=scale, mode="nearest")  # each pixel an s x s square
    r = torch.arange(-3, 4, dtype=torch.float32)
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).view(1, 1, 7, 7)
    return F.conv2d(squares, kernel, padding=3).clamp(0, 1)


def digits_sr_data(generator: torch.Generator, n_test: int = 297):
    """(lr_train, hr_train, lr_test, hr_test): HR rendered 32x32 digits, LR their 16x16 area downsampling."""
    hr = render_digits()
    lr = U.interpolate(hr, scale_factor=0.5, mode="area")  # (1797, 1, 32, 32) -> (1797, 1, 16, 16)
    perm = torch.randperm(len(hr), generator=generator)
    test, train = perm[:n_test], perm[n_test:]
    return lr[train], hr[train], lr[test], hr[test]


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over images of 10 log10(1 / MSE), images in [0, 1]."""
    mse = ((pred.clamp(0, 1) - target) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(1 / mse)).mean())


class SRNet(nn.Module):
    """conv-ReLU-conv-ReLU at low resolution, an x2 upsampler, conv to one channel: (N,1,H,W) -> (N,1,2H,2W)."""

    def __init__(self, upsampler: str, width: int, generator: torch.Generator):
        super().__init__()
        with rng_scope(generator):
            self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                          nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
            self.out = nn.Conv2d(width, 1, 3, padding=1)
        self.up = make_upsampler(upsampler, width, width, generator)
        with torch.no_grad():
            for m in (self.features[0], self.features[2], self.out):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.up(self.features(x))))


def train_sr(upsampler: str, data, steps: int, width: int, generator: torch.Generator, batch: int = 32) -> SRNet:
    """AdamW (lr 2e-3, cosine decay to 0) on the MSE of `steps` random batches of (lr_train, hr_train)."""
    lr_train, hr_train = data[0], data[1]
    model = SRNet(upsampler, width, generator)
    opt = AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    schedule = functools.partial(warmup_cosine, warmup_steps=0, total_steps=steps)
    for step in range(steps):
        set_lr(opt, step, schedule)
        idx = torch.randint(0, len(lr_train), (batch,), generator=generator)
        loss = F.mse_loss(model(lr_train[idx]), hr_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def super_resolution(steps: int, width: int, data_generator: torch.Generator, model_generators,
                     progress=lambda fraction, message="": None):
    """PSNR of fixed and learned x2 upsampling of test digits -> (metrics, checks, table, outputs).

    ``model_generators`` gives one generator per learned upsampler (LEARNED order); ``outputs``
    maps each method, "LR" and "HR" to its first four test images, and "psnr" to the scores.
    """
    data = digits_sr_data(data_generator)
    lr_test, hr_test = data[2], data[3]
    scores = {m: psnr(U.interpolate(lr_test, scale_factor=2, mode=m), hr_test) for m in FIXED}
    flat_index, outputs = {}, {"LR": lr_test[:4], "HR": hr_test[:4]}
    outputs.update({m: U.interpolate(lr_test[:4], scale_factor=2, mode=m) for m in FIXED})
    for t, (up, gen) in enumerate(zip(LEARNED, model_generators)):
        model = train_sr(up, data, steps, width, gen)
        with torch.no_grad():
            scores[up] = psnr(model(lr_test), hr_test)
            flat_index[up] = checkerboard_index(model(torch.full((1, 1, 16, 16), 0.5)))
            outputs[up] = model(lr_test[:4])
        progress((t + 1) / len(LEARNED), f"SR with {up}")
    best_fixed = max(FIXED, key=lambda m: scores[m])
    metrics = {f"psnr_{_key(m)}": v for m, v in scores.items()}
    metrics.update({f"sr_flat_checkerboard_{_key(m)}": v for m, v in flat_index.items()})
    checks = [Check(f"SR x2: PSNR({up}) - PSNR(best fixed: {best_fixed}) (dB)", scores[up] - scores[best_fixed],
                    ">", 0.0, label=f"SR {up} gain (dB)") for up in LEARNED]
    ranking = sorted(scores, key=scores.get, reverse=True)
    table = Table(f"x2 super-resolution of digits (16x16 -> 32x32, {len(lr_test)} test images; learned: {steps} "
                  f"AdamW steps, width {width})", ["method", "PSNR (dB)", "checkerboard index of a flat grey output"],
                  [[m, f"{scores[m]:.2f}", f"{flat_index[m]:.2e}" if m in flat_index else "—"] for m in ranking])
    outputs["psnr"] = scores
    return metrics, checks, table, outputs


# --- figures ----------------------------------------------------------------------------------------------

def plot_checkerboard(ctx: Context, examples, metrics) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LAYERS), figsize=(2.4 * len(LAYERS), 2.6))
    for ax, k in zip(axes, LAYERS):
        ax.imshow(examples[k][:12, :12].numpy(), cmap="gray")
        ax.set_title(f"{k}\nindex {metrics[f'checkerboard_{_key(k)}']:.2g}", fontsize=8)
        ax.axis("off")
    ctx.save_figure(fig, "checkerboard", "One output channel (12x12 corner) of each randomly initialised x2 "
                                         "layer on a constant input.")


def plot_super_resolution(ctx: Context, outputs) -> None:
    import matplotlib.pyplot as plt

    cols = ["LR"] + FIXED + LEARNED + ["HR"]
    scores = outputs["psnr"]
    fig, axes = plt.subplots(4, len(cols), figsize=(1.5 * len(cols), 1.6 * 4))
    for i in range(4):
        for j, c in enumerate(cols):
            axes[i, j].imshow(outputs[c][i, 0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(c if c not in scores else f"{c}\n{scores[c]:.1f} dB", fontsize=7)
    ctx.save_figure(fig, "super-resolution", "x2 super-resolution of test digits; PSNR over the test set.")


class Upsampling(NoteExperiment):
    slug = "upsampling"
    single_threaded = True  # small models: one thread is faster and core-count independent

    def measure(self, ctx: Context) -> Result:
        metrics, checks = {}, []

        m, c, parity_table = parity(ctx.generator(1))
        metrics.update(m)
        checks += c
        ctx.progress(0.1, "parity")

        m, c, board_table, examples = checkerboard_at_init(ctx.pick(8, 32, tiny=1), ctx.generator(2))
        metrics.update(m)
        checks += c
        ctx.progress(0.25, "checkerboard")

        steps, width = ctx.pick(600, 1500, tiny=3), ctx.pick(16, 24, tiny=4)
        m, c, sr_table, outputs = super_resolution(steps, width, ctx.generator(3),
                                                   [ctx.generator(10 + k) for k in range(len(LEARNED))],
                                                   lambda f, msg: ctx.progress(0.25 + 0.7 * f, msg))
        metrics.update(m)
        checks += c

        plot_checkerboard(ctx, examples, metrics)
        plot_super_resolution(ctx, outputs)
        ctx.progress(1.0, "done")
        scores = outputs["psnr"]
        ranking = sorted(scores, key=scores.get, reverse=True)
        return Result(
            metrics=metrics, checks=checks, tables=[parity_table, sr_table, board_table],
            summary=(f"Max parity error vs torch {metrics['parity_max_abs_error']:.1e}; checkerboard index at init: "
                     f"tconv k3s2 {metrics['checkerboard_tconv_k3_s2']:.3f}, k4s2 "
                     f"{metrics['checkerboard_tconv_k4_s2']:.3f}, resize-conv {metrics['checkerboard_resize_conv']:.1e}"
                     f", ICNR {metrics['checkerboard_sub_pixel_icnr']:.1e}; SR PSNR ranking: "
                     + ", ".join(f"{m} {scores[m]:.2f}" for m in ranking) + " dB."),
        )
