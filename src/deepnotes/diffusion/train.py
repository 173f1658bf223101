r"""Training a score model: a network wrapped as ``score_fn(x, t)``, trained by fit() with EMA.

A network ``net(x, c)`` sees a noise label ``c`` and returns a tensor shaped like x. The
wrapper turns it into a score with the parameterisation each SDE family trains best with:

    VP, subVP   epsilon-prediction   s(x, t) = −net(x, (N−1)·t) / σ(t)    c: DDPM's index scale ("999t")
    VE          sigma-scaling        s(x, t) =  net(x, σ(t)) / σ(t)        c: σ, embedded as log σ (NCSN++)

Both make the network's target unit-scale at every t: with the default DSM weighting
λ(t) = σ(t)², the loss ‖σ s + z‖² is ‖z − net‖² for VP (DDPM's ε-loss in continuous time)
and ‖net + z‖² for VE. For VP the same network is therefore a DDPM ε-network
(``ScoreModel.eps``), which is what lets note 9 sample one network both ways.

Objectives (``ScoreTraining.objective``):

    "dsm"    continuous-time denoising score matching, t ~ U(eps, 1) (losses.dsm_loss)
    "ddpm"   DDPM's discrete ε-loss, i ~ U{0..N−1} (losses.ddpm_loss; VP only)
    "ncsn"   NCSN's noise-conditional DSM over n_levels geometric σ from the VE SDE's σ_max
             to σ_min (smld.ncsn_loss; VE only)
    "ssm"    sliced score matching (SSM-VR) on data noised at one of the same levels per
             step, weighted σ² as NCSN's anneal_sliced_score_estimation (VE only)

Training goes through ``deepnotes.train.fit``: AdamW, linear warm-up, gradient clipping, an
EMA of the weights (score_sde: 0.999 for VE, 0.9999 for VP at 1.3M steps; smaller runs
need a shorter average), checkpoints with exact resume when ``checkpoint_dir`` is given. The
returned model holds the EMA weights.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ..artifacts import ArtifactStore, Recipe, fingerprint
from ..optim import AdamW
from ..optim.schedules import get_schedule
from ..train import EMA, fit
from .sde import SDE, SubVPSDE, VESDE, VPSDE

__all__ = ["SDES", "make_sde", "sde_config", "ScoreModel", "build_score_model", "ScoreTraining",
           "train_score_model", "trained_score_model"]

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
OBJECTIVES = ("dsm", "ddpm", "ncsn", "ssm")


def make_sde(name: str, **kwargs) -> SDE:
    """``make_sde("vp", beta_max=20.0)``: the SDE of that family with those parameters."""
    if name not in SDES:
        raise ValueError(f"sde must be one of {sorted(SDES)}, got {name!r}")
    return SDES[name](**kwargs)


def sde_config(sde: SDE) -> dict:
    """The JSON-able description of an SDE that make_sde rebuilds it from."""
    name = {cls: key for key, cls in SDES.items()}.get(type(sde))
    if name is None:
        raise TypeError(f"sde must be one of {[c.__name__ for c in SDES.values()]}, got {type(sde).__name__}")
    if name == "ve":
        params = {"sigma_min": float(sde.sigma_min), "sigma_max": float(sde.sigma_max)}
    else:
        params = {"beta_min": float(sde.beta_0), "beta_max": float(sde.beta_1)}
    return {"name": name, **params, "N": int(sde.N)}


def _sde_from_config(config: dict) -> SDE:
    params = {k: v for k, v in config.items() if k != "name"}
    return make_sde(config["name"], **params)


class ScoreModel(nn.Module):
    """``score_fn(x, t)`` from ``net(x, c)``: ε-prediction for VP/subVP, σ-scaling for VE (module docstring).

    Args:
        net: a module mapping (x (B, ...), c (B,)) to a tensor shaped like x.
        sde: the SDE whose marginal std σ(t) converts the output to a score.
        n_labels: N of the label scale for VP/subVP (c = (N−1)·t); DDPM's 1000 by default.
    """

    def __init__(self, net: nn.Module, sde: SDE, n_labels: int = 1000):
        super().__init__()
        if not isinstance(sde, (VPSDE, SubVPSDE, VESDE)):
            raise TypeError(f"sde must be a VPSDE, SubVPSDE or VESDE, got {type(sde).__name__}")
        self.net, self.sde, self.n_labels = net, sde, int(n_labels)
        self.sigma_scaled = isinstance(sde, VESDE)

    def _std(self, x: Tensor, t: Tensor) -> Tensor:
        std = self.sde.marginal_prob(torch.zeros_like(x), t)[1]
        return torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(x.shape[0], -1)[:, :1]  # (B, 1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        B = x.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(B)
        std = self._std(x, t).reshape(B, *([1] * (x.dim() - 1)))  # (B, 1, ..., 1)
        if self.sigma_scaled:
            return self.net(x, std.reshape(B)) / std
        return -self.net(x, t * (self.n_labels - 1)) / std

    def score_at_sigma(self, x: Tensor, sigma: Tensor) -> Tensor:
        """A VE model as NCSN's noise-conditional score s(x, σ) = net(x, σ) / σ, σ a float or (B,)."""
        if not self.sigma_scaled:
            raise TypeError("ScoreModel.score_at_sigma: only a VE (sigma-scaled) model is conditioned on sigma")
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.net(x, sigma) / sigma.reshape(x.shape[0], *([1] * (x.dim() - 1)))

    def eps(self, x: Tensor, label: Tensor) -> Tensor:
        """The DDPM ε-network view, label = the 0-based step index (VP/subVP models only)."""
        if self.sigma_scaled:
            raise TypeError("ScoreModel.eps: a VE (sigma-scaled) model is not an epsilon-network")
        return self.net(x, label)


def build_score_model(sde: SDE, data_shape: tuple[int, ...], *, hidden: int = 128, depth: int = 3,
                      channels: int = 32, channel_mult: tuple[int, ...] = (1, 2),
                      generator: torch.Generator | None = None) -> ScoreModel:
    """A ScoreModel for data of shape (D,) (ScoreMLP) or (C, R, R) (ScoreUNet), with the label
    embedding its SDE family needs: sinusoidal over 0..999 for VP/subVP, Fourier of log σ for VE."""
    from .nets import ScoreMLP, ScoreUNet

    data_shape = tuple(int(d) for d in data_shape)
    ve = isinstance(sde, VESDE)
    embedding = dict(embedding="fourier", log_input=True) if ve else dict(embedding="sinusoidal")
    if len(data_shape) == 1:
        net = ScoreMLP(data_shape[0], hidden=hidden, depth=depth, generator=generator, **embedding)
    elif len(data_shape) == 3 and data_shape[1] == data_shape[2]:
        net = ScoreUNet(data_shape[0], channels=channels, channel_mult=channel_mult, resolution=data_shape[1],
                        generator=generator, **embedding)
    else:
        raise ValueError(f"data_shape must be (D,) or (C, R, R), got {data_shape}")
    return ScoreModel(net, sde)


@dataclass(frozen=True)
class ScoreTraining:
    objective: str = "dsm"  # "dsm" (continuous t) | "ddpm" (discrete ε-loss, VP) | "ncsn" | "ssm" (VE)
    steps: int = 2000  # optimizer steps
    batch_size: int = 256
    lr: float = 2e-3  # AdamW peak learning rate
    warmup: int = 100  # linear warm-up steps (score_sde: 5000 of 1.3M)
    schedule: str = "constant"  # after warm-up: "constant" (score_sde) | "cosine" (decay to lr/10: short runs)
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0  # score_sde's default
    ema_decay: float = 0.999  # with TensorFlow's warm-up min(d, (1+n)/(10+n))
    eps: float = 1e-5  # smallest training time (score_sde)
    weighting: str = "default"  # "default" λ = σ² | "likelihood" λ = g² (dsm only)
    reduce: str = "mean"  # "mean" over dims | "sum" (half the sum), score_sde's reduce_mean
    n_levels: int = 10  # L, the geometric noise levels of "ncsn" / "ssm" (NCSN: 10)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (isinstance(self.warmup, int) and 0 <= self.warmup <= self.steps):
            raise ValueError(f"warmup must be an int in [0, steps={self.steps}], got {self.warmup!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.eps < 1.0:
            raise ValueError(f"eps must be in [0, 1) (the smallest training time; T = 1), got {self.eps}")
        if isinstance(self.n_levels, bool) or not isinstance(self.n_levels, int) or self.n_levels < 2:
            raise ValueError(f"n_levels must be an int >= 2, got {self.n_levels!r}")
        if self.weighting not in ("default", "likelihood") or self.reduce not in ("mean", "sum"):
            raise ValueError(f"weighting must be 'default' or 'likelihood' and reduce 'mean' or 'sum', got "
                             f"{self.weighting!r}, {self.reduce!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def to_dict(self) -> dict:
        return asdict(self)


def _loss_fn(model: ScoreModel, cfg: ScoreTraining, generator: torch.Generator):
    from .losses import ddpm_loss, dsm_loss

    if cfg.objective in ("ncsn", "ssm"):
        from .losses import ssm_loss
        from .smld import geometric_sigmas, ncsn_loss

        if not model.sigma_scaled:
            raise ValueError(f"objective={cfg.objective!r} trains a noise-conditional score: it needs a VESDE")
        sigmas = geometric_sigmas(model.sde.sigma_max, model.sde.sigma_min, cfg.n_levels)
        if cfg.objective == "ncsn":
            def loss_fn(module, batch):
                return ncsn_loss(module.score_at_sigma, batch[0], sigmas, generator=generator)
        else:
            def loss_fn(module, batch):
                x = batch[0]
                sigma = sigmas[int(torch.randint(len(sigmas), (), generator=generator))].item()
                noisy = x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                return sigma**2 * ssm_loss(lambda y: module.score_at_sigma(y, sigma), noisy,
                                           variance_reduction=True, generator=generator)
    elif cfg.objective == "ddpm":
        from .ddpm import DDPM

        if model.sigma_scaled:
            raise ValueError("objective='ddpm' trains an epsilon-network: it needs a VP or subVP sde, got VESDE")
        sde = model.sde
        ddpm = DDPM(beta_min=float(sde.beta_0), beta_max=float(sde.beta_1), N=model.n_labels)

        def loss_fn(module, batch):
            return ddpm_loss(module.eps, ddpm, batch[0], generator=generator)
    else:
        def loss_fn(module, batch):
            return dsm_loss(module, module.sde, batch[0], eps=cfg.eps, weighting=cfg.weighting, reduce=cfg.reduce,
                            generator=generator)
    return loss_fn


def train_score_model(model: ScoreModel, data: Tensor, cfg: ScoreTraining, *, generator: torch.Generator,
                      checkpoint_dir=None, metrics_path=None, progress: bool | None = False,
                      device: str = "cpu", stop_after: int | None = None) -> dict:
    """Trains ``model`` in place on ``data`` (N, ...) and leaves the EMA weights in it.

    ``generator`` draws the noise levels and noise of every step (and is checkpointed, so a
    resumed run draws what an uninterrupted one would); the data order is seeded from it too.
    ``stop_after`` ends the call after that many steps of the run (its schedule still spans
    cfg.steps): with ``checkpoint_dir`` a later call continues it, as after an interruption.
    Returns JSON-able ``{"loss_curve": [[step, mean loss of the window of 10% of the run ending there]...],
    "final_loss", "steps", "seconds"}``.
    """
    if not isinstance(data, Tensor) or data.dim() < 2 or data.shape[0] < cfg.batch_size:
        got = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise ValueError(f"data must be a tensor (N, ...) with N >= batch_size={cfg.batch_size}, got {got}")
    if not torch.isfinite(data).all():
        raise ValueError("data contains inf or NaN values")
    model.to(device)
    seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
    opt = AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, decay=cfg.ema_decay)
    if cfg.schedule == "cosine":
        schedule = get_schedule("cosine", warmup_steps=cfg.warmup, total_steps=cfg.steps, min_ratio=0.1)
    else:
        schedule = get_schedule("constant", warmup_steps=cfg.warmup) if cfg.warmup else None
    t0 = time.perf_counter()
    result = fit(model, opt, TensorDataset(data), _loss_fn(model, cfg, generator), ema=ema, schedule=schedule,
                 generator=generator, max_steps=stop_after or cfg.steps, batch_size=cfg.batch_size, grad_clip=cfg.grad_clip,
                 seed=seed, device=device, checkpoint_dir=checkpoint_dir, metrics_path=metrics_path,
                 progress=progress, log_every=max(1, cfg.steps // 20))
    ema.copy_to(model)
    losses = result.losses
    window = max(1, math.ceil(0.1 * len(losses)))
    curve = [[i + 1, sum(losses[max(0, i + 1 - window): i + 1]) / len(losses[max(0, i + 1 - window): i + 1])]
             for i in range(0, len(losses), max(1, len(losses) // 50))]
    final = sum(losses[-window:]) / window if losses else float("nan")
    return {"loss_curve": curve, "final_loss": final, "steps": result.step,
            "seconds": round(time.perf_counter() - t0, 2)}


def trained_score_model(store: ArtifactStore, name: str, sde: SDE, data: Tensor, cfg: ScoreTraining, seed: int,
                        **arch: Any) -> tuple[ScoreModel, dict]:
    """(model, info): the ScoreModel for ``data`` trained by ``cfg`` from ``seed``, loaded from
    ``store`` when it holds one, else trained and stored. Seed s draws the initial weights
    (generator s) and the training noise and data order (generator s + 1)."""
    recipe = Recipe(name, config={"sde": sde_config(sde), "training": cfg.to_dict(), "arch": arch}, seed=seed,
                    data=fingerprint(data))
    shape = tuple(data.shape[1:])
    return store.get(
        recipe,
        build=lambda: build_score_model(sde, shape, generator=torch.Generator().manual_seed(seed), **arch),
        train=lambda m: train_score_model(m, data, cfg, generator=torch.Generator().manual_seed(seed + 1)))
