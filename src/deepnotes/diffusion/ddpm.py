r"""Discrete DDPM (Ho, Jain & Abbeel 2020) and its bridge to the VP SDE (Song et al. 2021).

Indices are 0-based: level i = 0 .. N−1 is Ho et al.'s t = i + 1, and x0 is the data.
With :math:`\alpha_i = 1 - \beta_i` and :math:`\bar\alpha_i = \prod_{j \le i} \alpha_j`,

.. math::  q(x_i \mid x_0) = N(\sqrt{\bar\alpha_i}\, x_0,\ (1 - \bar\alpha_i) I).

Ancestral sampling (Algorithm 2) starts from x ~ N(0, I) at level N−1 and for i = N−1 .. 0 applies

.. math::  x \leftarrow \frac{1}{\sqrt{\alpha_i}}\Big(x - \frac{\beta_i}{\sqrt{1 - \bar\alpha_i}}\,
           \epsilon_\theta(x, i)\Big) + \sigma_i z, \qquad
           \sigma_i^2 = \beta_i \ \text{or}\ \tilde\beta_i = \beta_i \frac{1 - \bar\alpha_{i-1}}{1 - \bar\alpha_i},

with no noise at i = 0 (N network calls). score_sde discretises the VP SDE with
:math:`\beta_i = \text{linspace}(\beta_{\min}/N, \beta_{\max}/N, N)`, which for the defaults
(0.1, 20, 1000) is exactly Ho et al.'s linspace(1e-4, 0.02, 1000).

Conversion: :math:`s(x, t) = -\epsilon(x, t) / \sigma(t)`. Label convention: an
epsilon-network takes the 0-based index i as a float; the VP-SDE side feeds it
``t·(N−1)`` (score_sde's "999t"), so t = 1 is the last index and one network serves both.
The two sides differ by O(1/N) in the noise level they attach to a label: the discrete
√ᾱ_{N−1} is 0.006353 where the VP SDE's √ᾱ(1) = exp(−¼(β1 − β0) − ½β0) is 0.006572.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .samplers import SampleResult
from .sde import check_shape

__all__ = ["DDPM", "eps_to_score", "score_to_eps"]

EpsModel = Callable[[Tensor, Tensor], Tensor]


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1), in x's dtype and device."""
    return v.to(device=x.device, dtype=x.dtype).reshape(x.shape[0], *([1] * (x.dim() - 1)))


class DDPM:
    """The discrete DDPM noise schedule and its ancestral sampler.

    Args:
        beta_min, beta_max: the VP SDE's β(0), β(1); the chain uses β_i = linspace(β_min/N, β_max/N, N).
        N: number of steps.
        betas: explicit (N,) schedule in (0, 1), overriding beta_min/beta_max/N.

    Schedules are held in float64 (the product ᾱ loses digits in float32) and cast on use.
    Attributes: ``N``, ``betas``, ``alphas``, ``alpha_bars``, ``sqrt_alpha_bars``,
    ``sqrt_one_minus_alpha_bars``, ``posterior_variance`` (β̃_i, with ᾱ_{−1} = 1), all (N,).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000, *,
                 betas: Tensor | None = None):
        if betas is None:
            if int(N) != N or N < 1:
                raise ValueError(f"N must be an integer >= 1, got {N}")
            if not 0 < beta_min <= beta_max:
                raise ValueError(f"need 0 < beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
            if beta_max / N >= 1:
                raise ValueError(f"betas = linspace(beta_min/N, beta_max/N, N) must stay below 1, "
                                 f"got beta_max/N = {beta_max}/{N}; use a larger N")
            betas = torch.linspace(beta_min / N, beta_max / N, int(N), dtype=torch.float64)
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.dim() != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"betas must lie in (0, 1), got min {betas.min().item()}, max {betas.max().item()}")
        self.N = betas.numel()
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.sqrt_alpha_bars = self.alpha_bars.sqrt()
        self.sqrt_one_minus_alpha_bars = (1.0 - self.alpha_bars).sqrt()
        alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
        self.posterior_variance = betas * (1.0 - alpha_bars_prev) / (1.0 - self.alpha_bars)

    def __repr__(self) -> str:
        return f"DDPM(N={self.N}, beta_1={self.betas[0].item():.3g}, beta_N={self.betas[-1].item():.3g})"

    def _index(self, i: Tensor | int, x: Tensor) -> Tensor:
        B = x.shape[0]
        i = torch.as_tensor(i, device="cpu")
        if i.dim() == 0:
            i = i.expand(B)
        if i.shape != (B,) or i.dtype.is_floating_point or bool((i < 0).any()) or bool((i >= self.N).any()):
            raise ValueError(f"i must be an int or integer (B,)={B} tensor in [0, {self.N}), got {i}")
        return i.long()

    def q_sample(self, x0: Tensor, i: Tensor | int, noise: Tensor) -> Tensor:
        """Draw x_i ~ q(x_i | x_0): ``√ᾱ_i x0 + √(1−ᾱ_i) noise``; x0, noise (B, ...), i int or (B,)."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
        i = self._index(i, x0)
        return _bcast(self.sqrt_alpha_bars[i], x0) * x0 + _bcast(self.sqrt_one_minus_alpha_bars[i], x0) * noise

    @torch.no_grad()
    def sample(self, eps_model: EpsModel, shape, *, generator: torch.Generator | None = None,
               variance: str = "beta", device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> SampleResult:
        """Ancestral sampling (Ho et al. Algorithm 2) with N network calls.

        Args:
            eps_model: ``eps_model(x, label)``, x (B, ...), label (B,) = the index i as a float.
            shape: (B, ...), the sample shape.
            generator: the source of x_N and of the per-step noise.
            variance: ``"beta"`` (σ_i² = β_i) or ``"posterior"`` (σ_i² = β̃_i).
            device, dtype: of the samples.

        Returns:
            ``SampleResult(x, nfe)`` with x (B, ...) and nfe = N.
        """
        if variance not in ("beta", "posterior"):
            raise ValueError(f"variance must be 'beta' or 'posterior', got {variance!r}")
        shape = check_shape(shape)
        B = shape[0]
        sigma2 = self.betas if variance == "beta" else self.posterior_variance
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        for i in reversed(range(self.N)):
            label = torch.full((B,), float(i), device=x.device, dtype=dtype)
            eps = eps_model(x, label)
            if eps.shape != x.shape:
                raise ValueError(f"eps_model must return shape {tuple(x.shape)}, got {tuple(eps.shape)}")
            coef = (self.betas[i] / self.sqrt_one_minus_alpha_bars[i]).item()
            x = (x - coef * eps) / self.alphas[i].sqrt().item()
            if i > 0:
                z = torch.randn(shape, generator=generator, device=x.device, dtype=dtype)
                x = x + sigma2[i].sqrt().item() * z
        return SampleResult(x, self.N)


def _std(sde, x: Tensor, t: Tensor) -> Tensor:
    """The marginal std σ(t) of ``sde`` as (B, 1, ..., 1)."""
    B = x.shape[0]
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(B)
    std = sde.marginal_prob(torch.zeros_like(x), t)[1]  # (B,)
    return _bcast(std, x)


def eps_to_score(eps_model: EpsModel, sde, N: int = 1000) -> Callable[[Tensor, Tensor], Tensor]:
    """An epsilon-network as a score function: ``s(x, t) = −ε(x, t·(N−1)) / σ(t)``.

    ``N`` is the number of steps the network was trained with (its labels are 0..N−1),
    independent of ``sde.N``; σ(t) is the SDE's marginal std (VP: √(1 − e^{2m}), subVP:
    1 − e^{2m}). Undefined at t = 0, where σ = 0: samplers stop at t = eps > 0.
    """
    if int(N) != N or N < 2:
        raise ValueError(f"N must be an integer >= 2, got {N}")

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        label = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0]) * (N - 1)
        return -eps_model(x, label) / _std(sde, x, t)

    return score_fn


def score_to_eps(score_fn: Callable[[Tensor, Tensor], Tensor], sde, N: int = 1000) -> EpsModel:
    """A score function as an epsilon-network: ``ε(x, label) = −σ(t)·s(x, t)``, t = label/(N−1).

    The inverse of :func:`eps_to_score`; with it an exact score (``GaussianMixture.score``
    bound to an SDE) runs through :meth:`DDPM.sample`.
    """
    if int(N) != N or N < 2:
        raise ValueError(f"N must be an integer >= 2, got {N}")

    def eps_model(x: Tensor, label: Tensor) -> Tensor:
        t = torch.as_tensor(label, dtype=x.dtype, device=x.device).expand(x.shape[0]) / (N - 1)
        return -_std(sde, x, t) * score_fn(x, t)

    return eps_model
