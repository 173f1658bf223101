r"""Score matching with Langevin dynamics: NCSN (Song & Ermon 2019) and NCSNv2 (Song & Ermon 2020).

Noise levels form a geometric sequence :math:`\sigma_1 > \dots > \sigma_L`. The
noise-conditional DSM objective (ncsn ``losses/dsm.py``, λ(σ) = σ²) draws one level per sample:

.. math::  \ell(\theta) = \tfrac12\, \mathbb{E}_{i, x, z}\, \sigma_i^2
           \big\| s_\theta(x + \sigma_i z, \sigma_i) + z / \sigma_i \big\|^2 .

Annealed Langevin dynamics, in NCSN's code convention (``anneal_runner.py``, ncsnv2
``models/__init__.py``): for each level, T steps of

.. math::  \alpha_i = \epsilon\, \sigma_i^2 / \sigma_L^2, \qquad
           x \leftarrow x + \alpha_i\, s_\theta(x, \sigma_i) + \sqrt{2\alpha_i}\; z .

The paper's Algorithm 1 writes :math:`x + \tfrac{\alpha_i}{2} s + \sqrt{\alpha_i} z`: the
same chain with a step twice as large, so the paper's (and ``toy_runner.py``'s) ``lr``
is ``2·step_lr`` here. With ε = 2e-5 and σ_L = 0.01 the step runs from 0.2σ_1² down to
2e-5, which is score_sde's ``ald`` corrector at snr √0.1 ≈ 0.316.

NCSNv2's rules: σ_1 = the largest pairwise distance in the data (technique 1), and γ =
σ_{i−1}/σ_i with :math:`\Phi(\sqrt{2D}(\gamma-1) + 3\gamma) - \Phi(\sqrt{2D}(\gamma-1) - 3\gamma) \approx 0.5`
(technique 2). Samplers return :class:`~deepnotes.diffusion.samplers.SampleResult`
``(x, nfe)``, nfe counting score calls.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .samplers import SampleResult

__all__ = [
    "annealed_langevin",
    "geometric_sigmas",
    "langevin",
    "ncsn_loss",
    "ncsnv2_gamma",
    "ncsnv2_gamma_criterion",
    "ncsnv2_sigma_max",
]

CondScoreFn = Callable[[Tensor, Tensor], Tensor]  # (x (B, ...), sigma (B,)) -> (B, ...)


def geometric_sigmas(sigma_max: float = 1.0, sigma_min: float = 0.01, num: int = 10, *,
                     dtype: torch.dtype | None = None) -> Tensor:
    """Geometric noise levels from ``sigma_max`` down to ``sigma_min``, (num,), descending.

    NCSN's ``np.exp(np.linspace(log σ_max, log σ_min, L))``; the defaults are its CIFAR-10 ones.
    """
    if int(num) != num or num < 1:
        raise ValueError(f"num must be an integer >= 1, got {num}")
    if not 0 < sigma_min <= sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min <= sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if num > 1 and sigma_min == sigma_max:
        raise ValueError(f"num={num} levels need sigma_min < sigma_max, got both {sigma_max}")
    logs = torch.linspace(math.log(sigma_max), math.log(sigma_min), int(num), dtype=torch.float64)
    return logs.exp().to(dtype or torch.get_default_dtype())


def ncsnv2_sigma_max(x: Tensor, *, chunk_size: int = 1024) -> float:
    """NCSNv2 technique 1: σ_1 = the maximum Euclidean distance between two data points.

    x (n, ...) is flattened to (n, D); distances are taken a (chunk_size, n) block at a time,
    so memory stays O(chunk_size·n) for thousands of points.
    """
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 2:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (n, ...) with n >= 2, got {got}")
    flat = x.reshape(x.shape[0], -1).to(torch.float64)  # (n, ...) -> (n, D)
    best = 0.0
    for start in range(0, flat.shape[0], chunk_size):
        block = torch.cdist(flat[start:start + chunk_size], flat,
                            compute_mode="donot_use_mm_for_euclid_dist")  # (chunk, n)
        best = max(best, block.max().item())
    return best


def _phi(v: float) -> float:
    return 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))


def ncsnv2_gamma_criterion(gamma: float, dims: int) -> float:
    """Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ): NCSNv2's overlap of adjacent noise shells."""
    a = math.sqrt(2.0 * dims) * (gamma - 1.0)
    return _phi(a + 3.0 * gamma) - _phi(a - 3.0 * gamma)


def ncsnv2_gamma(dims: int, *, target: float = 0.5, tol: float = 1e-10) -> float:
    """NCSNv2 technique 2: the ratio γ > 1 whose criterion equals ``target`` (bisection).

    The criterion is 0.9973 at γ = 1 and tends to 0 as γ grows only when √(2D) > 3, so D >= 5;
    past its single peak it falls monotonically, and that branch holds the one root. The
    CIFAR-10 config's γ = 1.0376 (σ 50 → 0.01, L = 232, D = 3072) sits near this root, at 0.567.
    """
    if int(dims) != dims or dims < 5:
        raise ValueError(f"dims must be an integer >= 5 (below, the criterion never falls to target), got {dims}")
    if not 0 < target < ncsnv2_gamma_criterion(1.0, dims):
        raise ValueError(f"target must be in (0, {ncsnv2_gamma_criterion(1.0, dims):.4f}), got {target}")
    lo, hi = 1.0, 2.0
    while ncsnv2_gamma_criterion(hi, dims) > target:  # D >= 5 ends this within a few doublings
        lo, hi = hi, 1.0 + 2.0 * (hi - 1.0)
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ncsnv2_gamma_criterion(mid, dims) > target else (lo, mid)
    return 0.5 * (lo + hi)


def _check_sigmas(sigmas, like: Tensor) -> Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=like.dtype, device=like.device)
    if sigmas.dim() != 1 or sigmas.numel() < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D sequence, got shape {tuple(sigmas.shape)}")
    if not bool((sigmas > 0).all()) or not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(f"sigmas must be positive and strictly descending, got {sigmas.tolist()}")
    return sigmas


def _check_batch(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (B, ...) with B >= 1, got {got}")


def _score(score_fn, x: Tensor, *args) -> Tensor:
    s = score_fn(x, *args)
    if not isinstance(s, Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
        raise ValueError(f"score_fn must return a tensor of the input's shape {tuple(x.shape)}, got {got}")
    return s


def ncsn_loss(score_fn: CondScoreFn, x: Tensor, sigmas, *, anneal_power: float = 2.0,
              generator: torch.Generator | None = None) -> Tensor:
    """NCSN's noise-conditional DSM loss (``anneal_dsm_score_estimation``), a 0-dim tensor.

    Each sample gets a level i ~ U{0..L−1}; ``score_fn(x̃, sigma)`` receives the per-sample
    σ as a (B,) tensor. Per sample: ½‖s + (x̃ − x)/σ²‖²·σ^anneal_power summed over the
    non-batch dims; returned as the batch mean.
    """
    _check_batch(x)
    sigmas = _check_sigmas(sigmas, x)
    B = x.shape[0]
    labels = torch.randint(0, sigmas.numel(), (B,), generator=generator, device=x.device)
    sigma = sigmas[labels]                                    # (B,)
    sigma_b = sigma.reshape(B, *([1] * (x.dim() - 1)))         # (B, 1, ..., 1)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_tilde = x + sigma_b * z
    target = -z / sigma_b                                     # = −(x̃ − x)/σ²
    s = _score(score_fn, x_tilde, sigma)
    per_sample = 0.5 * torch.square(s - target).reshape(B, -1).sum(dim=1) * sigma ** anneal_power
    return per_sample.mean()


@torch.no_grad()
def annealed_langevin(score_fn: CondScoreFn, x: Tensor, sigmas, *, n_steps_each: int = 100,
                      step_lr: float = 2e-5, generator: torch.Generator | None = None,
                      denoise: bool = False) -> SampleResult:
    """NCSN's annealed Langevin dynamics, from the initial samples ``x`` (B, ...).

    Per level σ_i (descending): ``n_steps_each`` steps of x ← x + α_i s(x, σ_i) + √(2α_i) z
    with α_i = step_lr·σ_i²/σ_L² (NCSN's code convention; the paper's/toy_runner's lr = 2·step_lr).
    ``denoise`` adds NCSNv2's final step x ← x + σ_L² s(x, σ_L) (Tweedie's mean), one more call.
    ``score_fn(x, sigma)`` gets sigma as a (B,) tensor and runs under ``torch.no_grad()``
    (a score that needs autograd enables it itself).

    Returns:
        ``SampleResult(x, nfe)``, nfe = L·n_steps_each (+1 with denoise).
    """
    _check_batch(x)
    sigmas = _check_sigmas(sigmas, x)
    if int(n_steps_each) != n_steps_each or n_steps_each < 1:
        raise ValueError(f"n_steps_each must be an integer >= 1, got {n_steps_each}")
    if not step_lr > 0:
        raise ValueError(f"step_lr must be > 0, got {step_lr}")
    B = x.shape[0]
    sigma_L = sigmas[-1].item()
    nfe = 0
    for sigma in sigmas.tolist():
        alpha = step_lr * (sigma / sigma_L) ** 2
        sigma_vec = torch.full((B,), sigma, dtype=x.dtype, device=x.device)
        for _ in range(int(n_steps_each)):
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + alpha * _score(score_fn, x, sigma_vec) + math.sqrt(2.0 * alpha) * z
            nfe += 1
    if denoise:
        sigma_vec = torch.full((B,), sigma_L, dtype=x.dtype, device=x.device)
        x = x + sigma_L ** 2 * _score(score_fn, x, sigma_vec)
        nfe += 1
    return SampleResult(x, nfe)


@torch.no_grad()
def langevin(score_fn: Callable[[Tensor], Tensor], x: Tensor, *, n_steps: int, step_size: float,
             generator: torch.Generator | None = None) -> SampleResult:
    """Plain (single-level) Langevin dynamics from ``x`` (B, ...): x ← x + δ s(x) + √(2δ) z.

    The same convention as :func:`annealed_langevin` (δ = step_size); NCSN's toy
    ``langevin_dynamics(lr=0.1)`` is step_size = 0.05. Returns ``SampleResult(x, nfe=n_steps)``.
    """
    _check_batch(x)
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    for _ in range(int(n_steps)):
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x + step_size * _score(score_fn, x) + math.sqrt(2.0 * step_size) * z
    return SampleResult(x, int(n_steps))
