r"""Exact log-likelihoods through the probability-flow ODE, and bits per dimension.

Along the ODE dx/dt = f̃(x, t) = f − ½ g² s(x, t) the density obeys the
instantaneous change of variables d log p_t(x_t)/dt = −∇·f̃(x_t, t), so

    log p_eps(x) = log p_T(x_T) + ∫_eps^T ∇·f̃(x_t, t) dt,   x_eps = x.

x_t and the integral are solved together (scipy RK45, rtol/atol). The
divergence is the Hutchinson–Skilling estimate ∇·f̃ ≈ εᵀ (∂f̃/∂x) ε with
E[εεᵀ] = I, one vector–Jacobian product by autograd; ε is drawn once and kept
for the whole solve, which keeps the estimate of log p unbiased
(score_sde_pytorch#10). Rademacher ε is exact whenever ∂f̃/∂x is diagonal;
Gaussian ε is the alternative; "exact" takes the full trace (D products), the
reference path.

Bits per dimension of discrete data (score_sde's bookkeeping, made explicit).
Data with L levels in [low, high] are dequantised uniformly: in [0, 1] units a
level k/(L − 1) becomes y = (k + u)/L, u ~ U(0, 1)^D, i.e. (x(L − 1) + u)/L,
and the model sees low + (high − low) y. Then −log P(k) ≤ −log p_model(x) +
D log(L/(high − low)) (Jensen), so

    bpd = −log p / (D ln 2) + log2(L / (high − low))

with offset 8 for 256 levels on [0, 1], 7 on [−1, 1] and log2 17 = 4.09 for
sklearn digits (17 grey levels) on [0, 1].
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from .sde import SDE

__all__ = [
    "ESTIMATORS",
    "bits_per_dim",
    "dequantization_offset",
    "dequantize",
    "divergence",
    "log_likelihood",
]

ESTIMATORS = ("rademacher", "gaussian", "exact")


def divergence(fn: Callable[[Tensor], Tensor], x: Tensor, noise: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """fn(x) and its per-sample divergence Σ_j ∂fn_j/∂x_j: (B, ...) -> (B, ...), (B,).

    With ``noise`` (B, ...) it is the Hutchinson–Skilling estimate εᵀ J ε (one
    vector–Jacobian product); without, the exact trace from D products.
    fn must act on each sample separately. Works under torch.no_grad().
    """
    B = x.shape[0]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        if not out.requires_grad:
            raise ValueError("fn (the score_fn) must be differentiable in x; was it run under no_grad or detached?")
        if noise is not None:
            (vjp,) = torch.autograd.grad(out, x, grad_outputs=noise, allow_unused=True)
            vjp = torch.zeros_like(x) if vjp is None else vjp  # fn constant in x
            return out.detach(), (vjp * noise).reshape(B, -1).sum(1)
        flat = out.reshape(B, -1)
        diag = []
        for j in range(flat.shape[1]):  # column j of the Jacobian, summed over the batch
            (col,) = torch.autograd.grad(flat[:, j].sum(), x, retain_graph=True, allow_unused=True)
            diag.append(x.new_zeros(B) if col is None else col.reshape(B, -1)[:, j])
        return out.detach(), torch.stack(diag, 1).sum(1)


def log_likelihood(sde: SDE, score_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, eps: float = 1e-5,
                   rtol: float = 1e-5, atol: float = 1e-5, estimator: str = "rademacher",
                   generator: torch.Generator | None = None) -> tuple[Tensor, int]:
    """log p_eps(x) in nats per sample, (B, ...) -> (B,) float64, and the NFE.

    p_eps is the model's density at t = eps (the data blurred by σ_eps). The NFE
    counts score_fn calls: one per ODE right-hand side, whatever the estimator.
    """
    if x.ndim == 0:
        raise ValueError("x must be (B, ...) with a batch dimension, got a 0-d tensor")
    if not torch.isfinite(x).all():
        raise ValueError("x must be finite")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    shape, B = x.shape, x.shape[0]
    if estimator == "rademacher":
        noise = torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
    elif estimator == "gaussian":
        noise = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    else:
        noise = None

    calls = 0

    def counted(x_: Tensor, t_: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        score = score_fn(x_, t_)
        if not getattr(score, "requires_grad", True):  # a detached score would drop out of ∇·f̃
            raise ValueError("score_fn must be differentiable in x for log_likelihood (no torch.no_grad inside)")
        return score

    rsde = sde.reverse(counted, probability_flow=True)

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y[:-B]).reshape(shape).to(x)
        tv = torch.full((B,), min(max(t, 0.0), sde.T), dtype=torch.float64, device=x.device)
        drift, div = divergence(lambda z: rsde.sde(z, tv)[0], xt, noise)
        return np.concatenate([drift.double().cpu().numpy().ravel(), div.double().cpu().numpy()])

    y0 = np.concatenate([x.detach().double().cpu().numpy().ravel(), np.zeros(B)])
    sol = solve_ivp(rhs, (eps, sde.T), y0, method="RK45", rtol=rtol, atol=atol)
    if sol.status != 0:
        raise RuntimeError(f"solve_ivp failed on the probability-flow ODE: {sol.message}")
    z = torch.from_numpy(sol.y[:-B, -1]).reshape(shape)           # x_T, (B, ...) float64
    delta_logp = torch.from_numpy(sol.y[-B:, -1])                  # ∫ div f̃ dt, (B,)
    return (sde.prior_logp(z) + delta_logp).to(x.device), calls


def dequantization_offset(levels: int, data_range: Sequence[float] = (0.0, 1.0)) -> float:
    """log2(levels / (high − low)): 8 for 256 levels on [0, 1], 7 on [−1, 1]."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")
    low, high = (float(v) for v in data_range)
    if not high > low:
        raise ValueError(f"data_range must be (low, high) with high > low, got {tuple(data_range)}")
    return math.log2(levels / (high - low))


def bits_per_dim(log_p: Tensor, dims: int | Sequence[int], offset: float) -> Tensor:
    """−log_p / (dims ln 2) + offset; log_p in nats, dims the size D (or shape) of one sample."""
    D = math.prod(dims) if isinstance(dims, (tuple, list, torch.Size)) else dims
    if isinstance(D, bool) or not isinstance(D, int) or D < 1:
        raise ValueError(f"dims must be a positive int or a shape, got {dims!r}")
    return -torch.as_tensor(log_p) / (D * math.log(2)) + offset


def dequantize(x: Tensor, levels: int, data_range: Sequence[float] = (0.0, 1.0),
               generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation: level k of ``levels`` in data_range -> (k + u)/levels, rescaled.

    x holds quantised values low + (high − low) k/(levels − 1); the result is
    continuous in [low, high], each level owning a cell of width (high − low)/levels.
    """
    dequantization_offset(levels, data_range)  # validates levels and data_range
    low, high = (float(v) for v in data_range)
    k = torch.round((x - low) / (high - low) * (levels - 1))
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return low + (high - low) * (k + u) / levels
