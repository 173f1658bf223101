r"""Isotropic Gaussian mixtures and the exact score of their noised densities.

    p(x) = Σ_k w_k N(x; μ_k, s_k² I),   x ∈ R^D (any event shape)

Under a linear SDE the kernel is x_t | x_0 ~ N(α_t x_0, σ_t² I), so the noised
density stays a mixture with the same weights:

    p_t(x) = Σ_k w_k N(x; α_t μ_k, v_k I),   v_k = α_t² s_k² + σ_t²
    ∇ log p_t(x) = −Σ_k r_k(x) (x − α_t μ_k) / v_k,   r_k = softmax_k(log w_k + log N_k)

The responsibilities r_k come from a softmax (a log-sum-exp), so the score is
exact, stable far from every mode and differentiable in x: ``log_likelihood``
takes its divergence by autograd. Samplers and likelihoods are then tested
with the true score and no training.

Shapes: means (K, *event), stds (K,), weights (K,); x (B, *event) -> log_prob
(B,), score (B, *event); internally (K, D, B), batch innermost.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .sde import SDE

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """Σ_k w_k N(μ_k, s_k² I) with isotropic components.

    Args:
        means: (K, *event) component means, e.g. (K, D) or (K, C, H, W).
        stds: (K,) positive component standard deviations s_k.
        weights: (K,) non-negative weights; normalised to sum to 1. Default uniform.
    """

    def __init__(self, means: Tensor, stds: Tensor | float, weights: Tensor | None = None) -> None:
        means = torch.as_tensor(means)
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        if means.ndim < 2:
            raise ValueError(f"means must be (K, *event) with at least 2 dims, got shape {tuple(means.shape)}")
        K = means.shape[0]
        stds = torch.as_tensor(stds, dtype=means.dtype, device=means.device)
        if stds.ndim == 0:
            stds = stds.expand(K)
        if stds.shape != (K,) or not (stds > 0).all() or not torch.isfinite(stds).all():
            raise ValueError(f"stds must be a positive (K,) = ({K},) tensor, got {stds.tolist()}")
        if weights is None:
            weights = torch.full((K,), 1.0 / K, dtype=means.dtype, device=means.device)
        weights = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        if weights.shape != (K,) or (weights < 0).any() or not weights.sum() > 0:
            raise ValueError(f"weights must be a non-negative (K,) = ({K},) tensor with a positive sum, "
                             f"got {weights.tolist()}")
        self.means, self.stds = means, stds
        self.weights = weights / weights.sum()
        self.event_shape = tuple(means.shape[1:])
        self.dim = math.prod(self.event_shape)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={len(self.weights)}, event_shape={self.event_shape})"

    def _check_x(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.event_shape or x.ndim != len(self.event_shape) + 1:
            raise ValueError(f"x must be (B, *{self.event_shape}), got shape {tuple(x.shape)}")

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws, (n, *event): pick k ~ w, then μ_k + s_k z."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, *self.event_shape), generator=generator, dtype=self.means.dtype,
                        device=self.means.device)
        s = self.stds[k].reshape(n, *([1] * len(self.event_shape)))
        return self.means[k] + s * z

    def _component_logits(self, x: Tensor, alpha: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        """log w_k + log N(x; α μ_k, v_k I) (K, B) and the offsets x − α μ_k (K, D, B).

        alpha (B,) scales the means; var (K, B) are the noised variances v_k. The
        batch is the innermost dim because CPU reductions over a short last dim
        (D = 2, K = 8) are not vectorised; the offsets are formed explicitly, not
        as ‖x‖² − 2αx·μ + α²‖μ‖², which cancels catastrophically at small σ.
        """
        B = x.shape[0]
        xt = x.reshape(B, self.dim).t()                                     # (D, B)
        means = self.means.to(x).reshape(-1, self.dim, 1)                   # (K, D, 1)
        diff = xt[None] - alpha[None, None, :] * means                      # (K, D, B)
        sq = diff.pow(2).sum(1)                                             # (K, B)
        logits = (self.weights.to(x).log()[:, None] - 0.5 * self.dim * torch.log(2 * math.pi * var)
                  - sq / (2 * var))
        return logits, diff

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x), (B, *event) -> (B,)."""
        self._check_x(x)
        B = x.shape[0]
        var = self.stds.to(x).pow(2)[:, None].expand(-1, B)
        logits, _ = self._component_logits(x, x.new_ones(B), var)
        return torch.logsumexp(logits, dim=0)

    def _noised_params(self, t: Tensor | float, sde: SDE, x: Tensor) -> tuple[Tensor, Tensor]:
        """α_t (B,) and v_k = α_t² s_k² + σ_t² (K, B) for x's batch."""
        t = sde.batch_t(t, x)
        alpha, sigma = (v.to(x) for v in sde.alpha_sigma(t))
        var = self.stds.to(x).pow(2)[:, None] * alpha[None] ** 2 + sigma[None] ** 2
        return alpha, var

    def score(self, x: Tensor, t: Tensor | float, sde: SDE) -> Tensor:
        """∇_x log p_t(x) of the mixture noised by sde's marginal; (B, *event) -> same.

        t is a float, 0-d or (B,) tensor in [0, T]. The t = 0 score is that of the
        mixture blurred by σ_0 (σmin for VE), matching ``sde.marginal_prob``.
        """
        self._check_x(x)
        alpha, var = self._noised_params(t, sde, x)
        logits, diff = self._component_logits(x, alpha, var)
        resp = torch.softmax(logits, dim=0)                                 # (K, B)
        score = -((resp / var)[:, None, :] * diff).sum(0)                   # (D, B)
        return score.t().reshape(x.shape)

    def noised(self, t: float, sde: SDE) -> GaussianMixture:
        """p_t as a GaussianMixture: means α_t μ_k, stds √(α_t² s_k² + σ_t²)."""
        t = sde.check_t(t)
        if t.numel() != 1:
            raise ValueError(f"t must be a single time for noised(), got shape {tuple(t.shape)}")
        alpha, sigma = (float(v) for v in sde.alpha_sigma(t.reshape(())))
        stds = (alpha ** 2 * self.stds.double() ** 2 + sigma ** 2).sqrt().to(self.stds)
        return GaussianMixture(alpha * self.means, stds, self.weights)

    def score_fn(self, sde: SDE):
        """score_fn(x, t) for the samplers: the exact noised score under sde."""
        return lambda x, t: self.score(x, t, sde)
