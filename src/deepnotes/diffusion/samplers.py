r"""Samplers for score-based models: reverse SDE, predictor–corrector, ODE solvers.

All methods start from the prior x_T and integrate, from T down to eps,

    reverse SDE            dx = [f − g² s(x, t)] dt + g dw̄
    probability-flow ODE   dx/dt = f − ½ g² s(x, t)

with one signature: ``sample(sde, score_fn, shape, method=..., ...)``.

    method              algorithm                                         NFE (calls of score_fn)
    euler_maruyama      EM on the reverse SDE                             steps
    reverse_diffusion   x − f + G z with the SDE's ``discretize``          steps
    ancestral           SMLD (VE) / DDPM (VP) ancestral step              steps
    pc                  Langevin corrector, then reverse diffusion        steps · (n_corrector_steps + 1)
    ode                 scipy RK45 on the probability-flow ODE (adaptive) nfev (+1 if denoise)
    dpm_solver          DPM-Solver++(2M), uniform in λ = log(α/σ)          steps
    heun                EDM Heun (Karras et al. 2022, Alg. 1), ρ = 7      2·steps − 1 (2·steps if not denoise)

Choices, where score_sde leaves one open:
* euler_maruyama integrates exactly from T to eps, dt = −(T − eps)/steps, the
  score taken at the first ``steps`` points of linspace(T, eps, steps + 1).
  score_sde uses dt = −1/N with scores at linspace(T, eps, N), overshooting eps.
* reverse_diffusion, ancestral and pc follow score_sde: times linspace(T, eps,
  steps) on ``sde.with_N(steps)``, so step i visits discrete level i; with
  steps = sde.N this is score_sde exactly. The Langevin step is
  ε = 2α (snr ‖z‖/‖s‖)², norms averaged over the batch, α = 1 (VE) or 1 − β_i
  (VP and subVP; score_sde's subVP lacks the β_i and fails).
* denoise: the stochastic samplers return the last step's noise-free mean, as
  score_sde. ode, dpm_solver and heun end with the data prediction (Tweedie)
  x̂0 = (x + σ² s)/α at eps, which is EDM's final Euler step to σ = 0 and
  costs one score call; score_sde's ODE uses a reverse-diffusion step instead.
* dpm_solver and heun use only (α_t, σ_t), so they run on VE, VP and subVP.
  heun works on EDM's scaled variables x̃ = x/α, σ̃ = σ/α = e^{−λ}, where the
  ODE reads dx̃/dσ̃ = −σ_t s(α x̃, t); for VE it is EDM's sampler as published.
  With denoise, steps counts the final jump to σ = 0 (one call for both).

Shapes: x (B, ...), any data shape; score_fn(x, t) gets t as a (B,) tensor in
x's dtype. ``generator`` drives every random draw, including the prior.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from .sde import SDE, VESDE, VPSDE, bview, call_score, check_shape

__all__ = ["METHODS", "SampleResult", "sample"]

METHODS = ("euler_maruyama", "reverse_diffusion", "ancestral", "pc", "ode", "dpm_solver", "heun")


class SampleResult(NamedTuple):
    x: Tensor  # (B, ...) samples
    nfe: int   # number of score_fn calls (batched evaluations)


@dataclasses.dataclass
class _Options:
    steps: int
    snr: float
    n_corrector_steps: int
    eps: float
    generator: torch.Generator | None
    rtol: float
    atol: float
    denoise: bool


class _Counted:
    """score_fn that counts its calls, so NFE is measured rather than assumed."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.fn(x, t)


def _vec(t: float | Tensor, x: Tensor) -> Tensor:
    """A time as a (B,) float64 tensor: float64 keeps t → level i exact in ``index``."""
    return torch.full((x.shape[0],), float(t), dtype=torch.float64, device=x.device)


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _data_prediction(sde: SDE, score_fn, x: Tensor, t: Tensor) -> Tensor:
    """Tweedie's x̂0 = (x + σ_t² s(x, t))/α_t, t (B,)."""
    alpha, sigma = (bview(v.to(x.dtype), x) for v in sde.alpha_sigma(t))
    return (x + sigma ** 2 * call_score(score_fn, x, t)) / alpha


def _euler_maruyama(sde: SDE, score_fn, x: Tensor, o: _Options) -> Tensor:
    rsde = sde.reverse(score_fn)
    ts = torch.linspace(sde.T, o.eps, o.steps + 1, dtype=torch.float64)
    dt = -(sde.T - o.eps) / o.steps
    for t in ts[:-1]:
        drift, g = rsde.sde(x, _vec(t, x))
        x_mean = x + drift * dt
        x = x_mean + bview(g, x) * math.sqrt(-dt) * _noise(x, o.generator)
    return x_mean if o.denoise else x


def _reverse_diffusion_step(rsde, x: Tensor, t: Tensor, o: _Options) -> tuple[Tensor, Tensor]:
    f, G = rsde.discretize(x, t)
    x_mean = x - f
    return x_mean + bview(G, x) * _noise(x, o.generator), x_mean


def _ancestral_step(sde: SDE, score_fn, x: Tensor, t: Tensor, o: _Options) -> tuple[Tensor, Tensor]:
    i = sde.index(t)
    s = call_score(score_fn, x, t)
    if isinstance(sde, VESDE):
        sigmas = sde.discrete_sigmas.to(x.device)
        sigma, prev = sigmas[i], torch.where(i == 0, torch.zeros_like(sigmas[i]), sigmas[i - 1])
        x_mean = x + bview((sigma ** 2 - prev ** 2).to(x.dtype), x) * s
        std = (prev ** 2 * (sigma ** 2 - prev ** 2) / sigma ** 2).sqrt()
    else:  # VPSDE: DDPM's posterior mean and √β_i
        beta = sde.discrete_betas.to(x.device)[i]
        x_mean = (x + bview(beta.to(x.dtype), x) * s) / bview((1 - beta).sqrt().to(x.dtype), x)
        std = beta.sqrt()
    return x_mean + bview(std.to(x.dtype), x) * _noise(x, o.generator), x_mean


def _langevin_step(sde: SDE, score_fn, x: Tensor, t: Tensor, o: _Options) -> Tensor:
    B = x.shape[0]
    if hasattr(sde, "alphas"):  # VP and subVP scale the step by α_i = 1 − β_i
        alpha = sde.alphas.to(x.device)[sde.index(t)].to(x.dtype)
    else:
        alpha = x.new_ones(B)
    for _ in range(o.n_corrector_steps):
        grad = call_score(score_fn, x, t)
        z = _noise(x, o.generator)
        # One ε for the whole batch, from batch-averaged norms, as score_sde.
        grad_norm = grad.reshape(B, -1).norm(dim=-1).mean()
        noise_norm = z.reshape(B, -1).norm(dim=-1).mean()
        step = 2 * alpha * (o.snr * noise_norm / grad_norm) ** 2                # (B,)
        x = x + bview(step, x) * grad + bview((2 * step).sqrt(), x) * z
    return x


def _discrete_loop(sde: SDE, score_fn, x: Tensor, o: _Options, method: str) -> Tensor:
    """reverse_diffusion, ancestral and pc: score_sde's loop over linspace(T, eps, steps)."""
    rsde = sde.reverse(score_fn)
    for t in torch.linspace(sde.T, o.eps, o.steps, dtype=torch.float64):
        t = _vec(t, x)
        if method == "pc":
            x = _langevin_step(sde, score_fn, x, t, o)
        if method == "ancestral":
            x, x_mean = _ancestral_step(sde, score_fn, x, t, o)
        else:
            x, x_mean = _reverse_diffusion_step(rsde, x, t, o)
    return x_mean if o.denoise else x


def _ode(sde: SDE, score_fn, x: Tensor, o: _Options) -> Tensor:
    rsde = sde.reverse(score_fn, probability_flow=True)
    shape, like = x.shape, x

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y).reshape(shape).to(like)
        drift, _ = rsde.sde(xt, _vec(min(max(t, 0.0), sde.T), xt))
        return drift.double().cpu().numpy().ravel()

    sol = solve_ivp(rhs, (sde.T, o.eps), x.double().cpu().numpy().ravel(), method="RK45",
                    rtol=o.rtol, atol=o.atol)
    if sol.status != 0:
        raise RuntimeError(f"solve_ivp failed on the probability-flow ODE: {sol.message}")
    x = torch.from_numpy(sol.y[:, -1]).reshape(shape).to(like)
    return _data_prediction(sde, score_fn, x, _vec(o.eps, x)) if o.denoise else x


def _time_grid(sde: SDE, lam: Tensor, eps: float) -> Tensor:
    """Times for a λ grid running from λ_T to λ_eps, endpoints pinned to T and eps."""
    t = sde.inverse_half_log_snr(lam).clamp(eps, sde.T)
    t[-1] = eps
    t[0] = sde.T  # a one-point grid is the start, T
    return t


def _dpm_solver(sde: SDE, score_fn, x: Tensor, o: _Options) -> Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 (arXiv 2211.01095), Algorithm 2."""
    n = o.steps - 1 if o.denoise else o.steps  # solver steps; the last call is the denoise
    lam_T, lam_eps = (float(sde.half_log_snr(torch.tensor(v, dtype=torch.float64))) for v in (sde.T, o.eps))
    lam = torch.linspace(lam_T, lam_eps, n + 1, dtype=torch.float64)
    ts = _time_grid(sde, lam, o.eps)
    alphas, sigmas = sde.alpha_sigma(ts)
    d_prev, h_prev = None, None
    for i in range(n):
        d = _data_prediction(sde, score_fn, x, _vec(ts[i], x))
        h = float(lam[i + 1] - lam[i])
        if d_prev is None:  # first step is first order (DPM-Solver++ 1 = DDIM)
            d_eff = d
        else:
            r = h_prev / h
            d_eff = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * d_prev
        x = float(sigmas[i + 1] / sigmas[i]) * x - float(alphas[i + 1] * math.expm1(-h)) * d_eff
        d_prev, h_prev = d, h
    # x sits at ts[-1]: eps, or T when steps = 1 leaves no solver step
    return _data_prediction(sde, score_fn, x, _vec(ts[-1], x)) if o.denoise else x


def _heun(sde: SDE, score_fn, x: Tensor, o: _Options, rho: float = 7.0) -> Tensor:
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1) in x̃ = x/α, σ̃ = σ/α."""
    def sigma_tilde(t: float) -> float:
        return math.exp(-float(sde.half_log_snr(torch.tensor(t, dtype=torch.float64))))

    n_pts = o.steps if o.denoise else o.steps + 1
    s_max, s_min = sigma_tilde(sde.T), sigma_tilde(o.eps)
    ramp = torch.linspace(0, 1, n_pts, dtype=torch.float64)
    grid = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    ts = _time_grid(sde, -grid.log(), o.eps)

    def deriv(xt: Tensor, i: int) -> Tensor:  # dx̃/dσ̃ = −σ_t s(α_t x̃, t)
        t = _vec(ts[i], xt)
        alpha, sigma = (float(v) for v in sde.alpha_sigma(ts[i]))
        return -sigma * call_score(score_fn, alpha * xt, t)

    x = x / float(sde.alpha_sigma(ts[0])[0])
    for i in range(n_pts - 1):
        dsig = float(grid[i + 1] - grid[i])
        d = deriv(x, i)
        x_euler = x + dsig * d
        x = x + dsig * 0.5 * (d + deriv(x_euler, i + 1))
    if o.denoise:  # Euler step to σ̃ = 0: x̃ + σ̃ σ s = Tweedie's x̂0
        return x - float(grid[-1]) * deriv(x, n_pts - 1)
    return x * float(sde.alpha_sigma(ts[-1])[0])


def sample(sde: SDE, score_fn: Callable[[Tensor, Tensor], Tensor], shape: Sequence[int],
           method: str = "euler_maruyama", steps: int = 1000, snr: float = 0.16,
           n_corrector_steps: int = 1, eps: float = 1e-3, generator: torch.Generator | None = None,
           *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
           rtol: float = 1e-5, atol: float = 1e-5, denoise: bool = True) -> SampleResult:
    """Draws ``shape`` = (B, ...) samples by integrating from T to eps with ``method``.

    Args:
        sde: a VESDE, VPSDE or SubVPSDE (ancestral: VE and VP only).
        score_fn: score_fn(x, t) -> ∇log p_t(x), x (B, ...), t (B,) in x's dtype.
        shape: (B, ...) of the samples; the prior draws them on ``device``
            (default: the generator's) in ``dtype``.
        method: one of ``METHODS``; steps, NFE and the end step per method are
            in the module docstring. "ode" ignores ``steps`` and uses rtol, atol.
        snr, n_corrector_steps: the Langevin corrector of "pc".
        eps: the last time; score_sde uses 1e-3 for VP/subVP, 1e-5 for VE.
        denoise: end on the noise-free mean / data prediction (see above).

    Returns:
        SampleResult(x, nfe) with nfe the counted score_fn calls.
    """
    shape = check_shape(shape)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")
    if isinstance(n_corrector_steps, bool) or not isinstance(n_corrector_steps, int) or n_corrector_steps < 0:
        raise ValueError(f"n_corrector_steps must be an int >= 0, got {n_corrector_steps!r}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    if method == "ancestral" and not isinstance(sde, (VESDE, VPSDE)):
        raise ValueError(f"method='ancestral' is defined for VESDE and VPSDE only, got {type(sde).__name__}")
    if method in ("reverse_diffusion", "ancestral", "pc"):
        try:  # score_sde's discrete loop needs N = steps levels
            sde = sde.with_N(steps)
        except ValueError as err:
            raise ValueError(f"steps={steps} is too few for method={method!r} on {sde}: {err}") from None
    if device is None and generator is not None:
        device = generator.device
    o = _Options(steps, snr, n_corrector_steps, eps, generator, rtol, atol, denoise)
    counted = _Counted(score_fn)
    x = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    with torch.no_grad():
        if method == "euler_maruyama":
            x = _euler_maruyama(sde, counted, x, o)
        elif method in ("reverse_diffusion", "ancestral", "pc"):
            x = _discrete_loop(sde, counted, x, o, method)
        elif method == "ode":
            x = _ode(sde, counted, x, o)
        elif method == "dpm_solver":
            x = _dpm_solver(sde, counted, x, o)
        else:
            x = _heun(sde, counted, x, o)
    return SampleResult(x, counted.calls)
