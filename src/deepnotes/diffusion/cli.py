"""``deepnotes diffusion train|sample|nll``: score models on a user's data.

    deepnotes diffusion train --data toy:8gaussians|digits|PATH.npy --sde vp|ve|subvp --out DIR
    deepnotes diffusion sample DIR --method ode --steps 100 --n 64 --out samples.png|samples.npy
    deepnotes diffusion nll DIR --data digits --levels 17

``train`` writes into DIR: ``model.safetensors`` (EMA weights) and ``model.json`` (the SDE,
architecture, data shape and training settings, so the model rebuilds without the command
line), ``checkpoints/last.safetensors`` (running it again with the same DIR resumes there),
``metrics.jsonl`` and ``samples.png``. Every flag maps to one field of ScoreTraining,
build_score_model or the SDE.
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from ..usage import UsageError, writable_folder

if TYPE_CHECKING:
    import torch

__all__ = ["add_parser", "run"]

MODEL_FILE, META_FILE = "model.safetensors", "model.json"


# Literal copies, so that building the parser imports no torch; a test holds them equal to the modules'.
METHODS = ("euler_maruyama", "reverse_diffusion", "ancestral", "pc", "ode", "dpm_solver", "heun")
SDE_NAMES = ("subvp", "ve", "vp")
OBJECTIVES = ("dsm", "ddpm", "ncsn", "ssm")


def add_parser(sub) -> None:
    """Adds ``diffusion`` and its subcommands to the top-level subparsers ``sub``."""
    p = sub.add_parser("diffusion", help="score-based diffusion models on your own data")
    cmds = p.add_subparsers(dest="diffusion_command", required=True)

    train = cmds.add_parser("train", help="train a score model (fit() with EMA and checkpoints)")
    train.add_argument("--data", required=True, help="toy:NAME (8gaussians, swissroll, moons, checkerboard, ncsn), "
                                                     "digits, or PATH.npy of shape (N, D) or (N, C, R, R)")
    train.add_argument("--n", type=int, default=20000, help="examples drawn from a toy set")
    train.add_argument("--sde", choices=SDE_NAMES, default="vp")
    train.add_argument("--sigma-min", type=float, default=0.01, help="VE: sigma at t=0")
    train.add_argument("--sigma-max", type=float, default=None,
                       help="VE: sigma at t=1 (default: the largest distance between two examples, NCSNv2)")
    train.add_argument("--beta-min", type=float, default=0.1, help="VP/subVP")
    train.add_argument("--beta-max", type=float, default=20.0, help="VP/subVP")
    # ScoreTraining's fields, one flag each (defaults: ScoreTraining's own)
    train.add_argument("--objective", choices=OBJECTIVES, default="dsm")
    train.add_argument("--steps", type=int, default=2000)
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--warmup", type=int, default=100)
    train.add_argument("--schedule", choices=["constant", "cosine"], default="constant")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--grad-clip", type=float, default=1.0)
    train.add_argument("--ema-decay", type=float, default=0.999)
    train.add_argument("--eps", type=float, default=1e-5, help="smallest training time")
    train.add_argument("--weighting", choices=["default", "likelihood"], default="default")
    train.add_argument("--reduce", choices=["mean", "sum"], default="mean")
    train.add_argument("--n-levels", type=int, default=10, help="ncsn/ssm: geometric noise levels")
    train.add_argument("--hidden", type=int, default=128, help="MLP width (vector data)")
    train.add_argument("--depth", type=int, default=3, help="MLP hidden layers (vector data)")
    train.add_argument("--channels", type=int, default=32, help="U-Net base channels (images)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, required=True, help="folder for the model, checkpoints and samples")

    sample = cmds.add_parser("sample", help="draw samples from a trained model")
    sample.add_argument("model", type=Path, metavar="DIR", help="a folder written by `diffusion train`")
    sample.add_argument("--method", choices=METHODS, default="ode")
    sample.add_argument("--steps", type=int, default=100)
    sample.add_argument("--n", type=int, default=64)
    sample.add_argument("--snr", type=float, default=0.16, help="pc: the corrector's signal-to-noise ratio")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", type=Path, required=True, help="FILE.npy (the samples) or FILE.png (a grid/scatter)")

    nll = cmds.add_parser("nll", help="negative log-likelihood via the probability-flow ODE")
    nll.add_argument("model", type=Path, metavar="DIR")
    nll.add_argument("--data", required=True, help="as for train")
    nll.add_argument("--n", type=int, default=500, help="examples evaluated")
    nll.add_argument("--levels", type=int, default=None,
                     help="number of discrete levels of the data on [0, 1] (256 for 8-bit images; digits: 17): "
                          "uniform dequantisation and a bits/dim figure with offset log2(levels)")
    nll.add_argument("--estimator", choices=["rademacher", "gaussian"], default="rademacher")
    nll.add_argument("--seed", type=int, default=0)


def load_data(spec: str, n: int, seed: int) -> tuple[torch.Tensor, int | None]:
    """(data (N, ...), levels or None) for a --data spec; a UsageError for a bad one."""
    import torch

    from .data import LEVELS_DIGITS, TOY_SETS, digits_data, load_array, toy_data

    if spec.startswith("toy:"):
        name = spec[4:]
        if name not in TOY_SETS:
            raise UsageError(f"--data {spec}: unknown toy set; valid: {', '.join('toy:' + s for s in TOY_SETS)}")
        if n < 1:
            raise UsageError(f"--n must be positive, got {n}")
        return toy_data(name, n, generator=torch.Generator().manual_seed(seed)), None
    if spec == "digits":
        return digits_data()[0], LEVELS_DIGITS
    if spec.endswith(".npy"):
        try:
            return load_array(spec), None
        except (ValueError, OSError) as err:
            raise UsageError(f"--data {spec}: {err}") from None
    raise UsageError(f"--data {spec!r}: expected toy:NAME, digits or PATH.npy")


def _load_model(folder: Path):
    from safetensors.torch import load_file

    from .train import _sde_from_config, build_score_model

    meta_path, weights = folder / META_FILE, folder / MODEL_FILE
    if not meta_path.is_file() or not weights.is_file():
        raise UsageError(f"{folder}: no {META_FILE} and {MODEL_FILE} here; train one with `deepnotes diffusion train`")
    meta = json.loads(meta_path.read_text())
    model = build_score_model(_sde_from_config(meta["sde"]), tuple(meta["data_shape"]), **meta["arch"])
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), meta


def save_samples(x: torch.Tensor, path: Path) -> None:
    """.npy: the array; .png: a scatter plot of 2-D points or a grid of images."""
    import torch

    import numpy as np

    if path.suffix == ".npy":
        np.save(path, x.numpy())
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x.dim() == 2:
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5)
        ax.set_aspect("equal")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return
    n, c, h, w = x.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = torch.ones(rows * (h + 1), cols * (w + 1), c)
    for k in range(n):
        r, q = divmod(k, cols)
        grid[r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = x[k].clamp(0, 1).permute(1, 2, 0)
    plt.imsave(path, grid.squeeze(-1).numpy() if c == 1 else grid.numpy(), cmap="gray" if c == 1 else None)


def _train(args, console) -> int:
    import torch

    from safetensors.torch import save_file

    from ..files import atomic_write
    from .smld import ncsnv2_sigma_max
    from .train import ScoreTraining, build_score_model, make_sde, sde_config, train_score_model

    out = writable_folder(args.out, "--out")
    data, levels = load_data(args.data, args.n, args.seed)
    try:
        cfg = ScoreTraining(**{f.name: getattr(args, f.name) for f in fields(ScoreTraining)})
        if args.sde == "ve":
            sigma_max = args.sigma_max if args.sigma_max is not None else ncsnv2_sigma_max(data.flatten(1))
            sde = make_sde("ve", sigma_min=args.sigma_min, sigma_max=sigma_max)
        else:
            sde = make_sde(args.sde, beta_min=args.beta_min, beta_max=args.beta_max)
        arch = ({"hidden": args.hidden, "depth": args.depth} if data.dim() == 2 else {"channels": args.channels})
        model = build_score_model(sde, tuple(data.shape[1:]), generator=torch.Generator().manual_seed(args.seed),
                                  **arch)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if data.shape[0] < cfg.batch_size:
        raise UsageError(f"--data has {data.shape[0]} examples, fewer than --batch-size {cfg.batch_size}")
    console.print(f"training a {args.sde} score model on {args.data} {tuple(data.shape)} for {cfg.steps} steps")
    info = train_score_model(model, data, cfg, generator=torch.Generator().manual_seed(args.seed + 1),
                             checkpoint_dir=out / "checkpoints", metrics_path=out / "metrics.jsonl", progress=None)
    meta = {"sde": sde_config(sde), "arch": arch, "data": args.data, "data_shape": list(data.shape[1:]),
            "levels": levels, "training": cfg.to_dict(), "seed": args.seed, "final_loss": info["final_loss"]}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / MODEL_FILE, lambda tmp: save_file(state, tmp))
    atomic_write(out / META_FILE, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
    _sample_to(model, 256 if data.dim() == 2 else 64, "ode", 100, 0.16, args.seed, out / "samples.png")
    console.print(f"final loss {info['final_loss']:.4f}; model: {out / MODEL_FILE}; samples: {out / 'samples.png'}")
    return 0


def _sample_to(model, n, method, steps, snr, seed, path: Path) -> int:
    import torch

    from .samplers import sample

    shape = (n, *model_shape(model))
    try:
        with torch.no_grad():
            result = sample(model.sde, model, shape, method=method, steps=steps, snr=snr,
                            eps=1e-5 if model.sigma_scaled else 1e-3, generator=torch.Generator().manual_seed(seed))
    except ValueError as err:  # the sampler checks its arguments before any work: a usage error
        raise UsageError(str(err)) from None
    save_samples(result.x.detach(), path)
    return result.nfe


def model_shape(model) -> tuple[int, ...]:
    net = model.net
    if hasattr(net, "resolution"):
        return (net.in_channels, net.resolution, net.resolution)
    return (net.dim,)


def _sample(args, console) -> int:
    model, _ = _load_model(args.model)
    if args.out.suffix not in (".npy", ".png"):
        raise UsageError(f"--out {args.out}: expected a .npy or .png file name")
    writable_folder(args.out.parent if str(args.out.parent) else Path("."), "--out's folder")
    for flag in ("steps", "n"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be positive, got {getattr(args, flag)}")
    nfe = _sample_to(model, args.n, args.method, args.steps, args.snr, args.seed, args.out)
    console.print(f"{args.n} samples by {args.method} in {nfe} score evaluations: {args.out}")
    return 0


def _nll(args, console) -> int:
    import torch

    from .likelihood import bits_per_dim, dequantization_offset, dequantize, log_likelihood

    model, meta = _load_model(args.model)
    data, levels = load_data(args.data, args.n, args.seed + 7)
    levels = args.levels or levels
    if levels is not None and levels < 2:
        raise UsageError(f"--levels must be at least 2, got {levels}")
    if tuple(data.shape[1:]) != tuple(meta["data_shape"]):
        raise UsageError(f"--data has examples of shape {tuple(data.shape[1:])}; the model was trained on "
                         f"{tuple(meta['data_shape'])}")
    g = torch.Generator().manual_seed(args.seed)
    x = data[torch.randperm(data.shape[0], generator=g)[: args.n]]
    if levels:  # uniform dequantisation: level k/(L-1) on [0, 1] becomes (k + u)/L, u ~ U(0, 1)
        x = dequantize(x, levels, generator=g)
    log_p, nfe = log_likelihood(model.sde, model, x, estimator=args.estimator, generator=g)
    console.print(f"NLL {-log_p.mean():.4f} nats per example over {x.shape[0]} examples ({nfe} score evaluations)")
    if levels:
        dims = x[0].numel()
        bpd = bits_per_dim(log_p, dims, dequantization_offset(levels))
        console.print(f"{bpd.mean():.4f} bits/dim (offset log2({levels}) = {dequantization_offset(levels):.3f})")
    return 0


def run(args, console) -> int:
    return {"train": _train, "sample": _sample, "nll": _nll}[args.diffusion_command](args, console)
