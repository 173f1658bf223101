r"""Forward SDEs of score-based generative modelling (Song et al. 2021, score_sde).

    dx = f(x, t) dt + g(t) dw,  t in [0, T], T = 1
    reverse SDE:           dx = [f − g² ∇log p_t(x)] dt + g dw̄
    probability-flow ODE:  dx/dt = f − ½ g² ∇log p_t(x)

All three SDEs are linear, f = a(t) x, so x_t | x_0 ~ N(α_t x_0, σ_t² I) and
``alpha_sigma(t)`` returns (α_t, σ_t); λ_t = log(α_t/σ_t) is ``half_log_snr``.

    VESDE     σ(t) = σmin (σmax/σmin)^t,  f = 0,  g = σ(t) √(2 ln(σmax/σmin)),  α = 1
    VPSDE     β(t) = β0 + t(β1 − β0),  f = −½β x,  g = √β,
              m(t) = −¼t²(β1 − β0) − ½tβ0,  α = e^m,  σ = √(1 − e^{2m})
    SubVPSDE  f = −½β x,  g = √(β (1 − e^{−2β0 t − (β1−β0) t²})),  α = e^m,  σ = 1 − e^{2m}

Discretisations (``discretize``, score_sde's): VE is SMLD, G_i = √(σ_i² − σ_{i−1}²) with
σ_{−1} = 0; VP is DDPM, β_i = linspace(β0/N, β1/N, N), f_i = (√(1 − β_i) − 1) x,
G_i = √β_i; SubVP is Euler–Maruyama, f dt and g √dt with dt = T/N. A time t maps
to level i = ⌊t (N − 1)/T⌋, so linspace(T, eps, N) visits every level once.

Shapes: x is (B, ...), any data shape. t is a float, a 0-d tensor or a (B,)
tensor in [0, T]. Per-sample coefficients (diffusion, std, G) come back as (B,)
tensors, as in score_sde; ``bview`` reshapes them to (B, 1, ..., 1) for x.
Coefficients are computed in t's precision (float64 for Python floats) and cast
to x's dtype only where they meet x.
"""
from __future__ import annotations

import abc
import math
import operator
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["SDE", "VESDE", "VPSDE", "ReverseSDE", "SubVPSDE", "bview", "call_score", "check_shape"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def bview(v: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1): a per-sample coefficient that broadcasts over x (B, ...)."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def check_shape(shape: Sequence[int], name: str = "shape") -> tuple[int, ...]:
    """A data shape (B, ...) of positive ints, or a ValueError naming it."""
    try:  # operator.index accepts ints (and numpy ints), not floats or the characters of a str
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of ints (B, ...), got {shape!r}") from None
    if len(shape) == 0 or any(s < 1 for s in shape):
        raise ValueError(f"{name} must be (B, ...) with positive sizes, got {shape}")
    return shape


def call_score(score_fn: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    """score_fn(x, t) with t (B,) cast to x's dtype, checked to return x's shape."""
    score = score_fn(x, t.to(x.dtype))
    if not isinstance(score, Tensor) or score.shape != x.shape:
        raise ValueError(f"score_fn must return a tensor of x's shape {tuple(x.shape)}, "
                         f"got {getattr(score, 'shape', type(score))}")
    return score


class SDE(abc.ABC):
    """A linear forward SDE dx = a(t) x dt + g(t) dw on [0, T], discretised with N levels."""

    T: float = 1.0
    prior_std: float = 1.0  # the prior is N(0, prior_std² I)

    def __init__(self, N: int) -> None:
        if isinstance(N, bool) or not isinstance(N, int) or N < 1:
            raise ValueError(f"N must be an int >= 1, got {N!r}")
        self.N = N

    # --- hooks a variant overrides -------------------------------------------------
    @abc.abstractmethod
    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a(t), g(t)) with drift f = a(t) x; t any shape, results the same shape."""

    @abc.abstractmethod
    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(α_t, σ_t) of the perturbation kernel N(α_t x0, σ_t² I); same shape as t."""

    @abc.abstractmethod
    def inverse_half_log_snr(self, lam: Tensor) -> Tensor:
        """The t with λ_t = lam (λ is strictly decreasing in t)."""

    @abc.abstractmethod
    def with_N(self, N: int) -> SDE:
        """The same SDE discretised with N levels."""

    # --- time handling -------------------------------------------------------------
    def check_t(self, t: Tensor | float) -> Tensor:
        """t as a floating tensor (float64 for Python numbers), or a ValueError if outside [0, T]."""
        t = torch.as_tensor(t) if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float64)
        if not t.is_floating_point():
            t = t.to(torch.float64)
        if t.numel() and (not torch.isfinite(t).all() or t.min() < 0 or t.max() > self.T):
            raise ValueError(f"t must lie in [0, T={self.T}], got values in "
                             f"[{t.min().item()}, {t.max().item()}]")
        return t

    def batch_t(self, t: Tensor | float, x: Tensor) -> Tensor:
        """t as a (B,) tensor on x's device, keeping t's own precision."""
        if x.ndim == 0:
            raise ValueError("x must be (B, ...) with a batch dimension, got a 0-d tensor")
        B = x.shape[0]
        t = self.check_t(t).to(x.device)
        if t.ndim == 0:
            return t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must be a float, a 0-d tensor or a (B,) = ({B},) tensor "
                             f"matching x's batch, got shape {tuple(t.shape)}")
        return t

    def index(self, t: Tensor) -> Tensor:
        """Discrete level i = ⌊t (N − 1)/T⌋ of each time, as score_sde."""
        return (t.double() * (self.N - 1) / self.T).long().clamp_(0, self.N - 1)

    # --- the SDE ---------------------------------------------------------------------
    def sde(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Drift f(x, t) (B, ...) and diffusion g(t) (B,)."""
        t = self.batch_t(t, x)
        a, g = self.coefficients(t)
        return bview(a.to(x.dtype), x) * x, g.to(x.dtype)

    def marginal_prob(self, x0: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean α_t x0 (B, ...) and std σ_t (B,) of p_t(x_t | x0)."""
        t = self.batch_t(t, x0)
        alpha, sigma = self.alpha_sigma(t)
        return bview(alpha.to(x0.dtype), x0) * x0, sigma.to(x0.dtype)

    def forward_std(self, t: Tensor | float) -> Tensor:
        """Std of x_t | x0 obtained by integrating the SDE from t = 0; equals σ_t here."""
        return self.alpha_sigma(t)[1]

    def half_log_snr(self, t: Tensor | float) -> Tensor:
        """λ_t = log α_t − log σ_t, DPM-Solver's time variable."""
        alpha, sigma = self.alpha_sigma(t)
        return alpha.log() - sigma.log()

    def prior_sampling(self, shape: Sequence[int], generator: torch.Generator | None = None,
                       device: torch.device | str | None = None,
                       dtype: torch.dtype = torch.float32) -> Tensor:
        """x_T ~ N(0, prior_std² I) of the given shape (B, ...)."""
        shape = check_shape(shape)
        return self.prior_std * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std² I) summed over all non-batch dims: (B, ...) -> (B,)."""
        if z.ndim == 0:
            raise ValueError("z must be (B, ...) with a batch dimension, got a 0-d tensor")
        B, D = z.shape[0], z[0].numel()
        var = self.prior_std ** 2
        return -0.5 * D * math.log(2 * math.pi * var) - z.reshape(B, -1).pow(2).sum(1) / (2 * var)

    def discretize(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """One forward step x_{i+1} = x_i + f + G z: Euler–Maruyama f dt, g √dt, dt = T/N."""
        dt = self.T / self.N
        drift, g = self.sde(x, t)
        return drift * dt, g * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or probability-flow ODE) driven by score_fn(x, t)."""
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """Reverse of ``forward``: drift f − w g² s with w = 1 (SDE) or ½ and no noise (ODE).

    score_fn(x, t) gets x (B, ...) and t (B,) in x's dtype and returns (B, ...).
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False) -> None:
        self.forward, self.score_fn, self.probability_flow = forward, score_fn, probability_flow
        self.T, self.N = forward.T, forward.N

    def _reverse(self, x: Tensor, t: Tensor, f: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        w = 0.5 if self.probability_flow else 1.0
        f = f - bview(g * g, x) * call_score(self.score_fn, x, t) * w
        return f, torch.zeros_like(g) if self.probability_flow else g

    def sde(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Reverse drift (B, ...) and diffusion (B,), time running from T to 0."""
        t = self.forward.batch_t(t, x)
        return self._reverse(x, t, *self.forward.sde(x, t))

    def discretize(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Reverse step x_{i−1} = x_i − f + G z of the forward discretisation."""
        t = self.forward.batch_t(t, x)
        return self._reverse(x, t, *self.forward.discretize(x, t))


class VESDE(SDE):
    """Variance exploding SDE (SMLD / NCSN in the continuum).

    Marginal convention: ``marginal_prob`` returns std σ(t), as score_sde, although
    the SDE started at t = 0 gives x_t − x0 the std √(σ(t)² − σmin²) (``forward_std``;
    1.3e-4 rather than 0.01 at t = 1e-5). σ(t) is kept because it is what score
    models are trained on (the perturbed density p_t = p_data ∗ N(0, σ(t)² I)),
    what the prior N(0, σmax² I) and the SMLD levels σ_i assume, and what samplers
    and likelihoods integrate: p_0 is then data blurred by σmin, not raw data.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000) -> None:
        super().__init__(N)
        if not (math.isfinite(sigma_min) and sigma_min > 0):
            raise ValueError(f"sigma_min must be a positive finite number, got {sigma_min}")
        if not (math.isfinite(sigma_max) and sigma_max > sigma_min):
            raise ValueError(f"sigma_max must be finite and > sigma_min={sigma_min}, got {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.prior_std = self.sigma_max
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.discrete_sigmas = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), N,
                                                        dtype=torch.float64))

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, N={self.N})"

    def with_N(self, N: int) -> VESDE:
        return VESDE(self.sigma_min, self.sigma_max, N)

    def sigma(self, t: Tensor | float) -> Tensor:
        """σ(t) = σmin (σmax/σmin)^t."""
        return self.sigma_min * torch.exp(self.check_t(t) * self._log_ratio)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.sigma(t)
        return torch.zeros_like(sigma), sigma * math.sqrt(2 * self._log_ratio)

    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        sigma = self.sigma(t)
        return torch.ones_like(sigma), sigma

    def forward_std(self, t: Tensor | float) -> Tensor:
        """√(σ(t)² − σmin²): the std the SDE itself accumulates from x0 at t = 0."""
        return (self.sigma(t) ** 2 - self.sigma_min ** 2).clamp_min(0).sqrt()

    def inverse_half_log_snr(self, lam: Tensor) -> Tensor:
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    def discretize(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """SMLD step: f = 0, G = √(σ_i² − σ_{i−1}²), σ_{−1} = 0."""
        i = self.index(self.batch_t(t, x))
        sigmas = self.discrete_sigmas.to(x.device)
        sigma, prev = sigmas[i], torch.where(i == 0, torch.zeros_like(sigmas[i]), sigmas[i - 1])
        return torch.zeros_like(x), (sigma ** 2 - prev ** 2).sqrt().to(x.dtype)


class _LinearBetaSDE(SDE):
    """Shared by VP and subVP: β(t) = β0 + t(β1 − β0) and the DDPM betas β_i."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> None:
        super().__init__(N)
        if not (math.isfinite(beta_min) and beta_min >= 0):
            raise ValueError(f"beta_min must be a finite number >= 0, got {beta_min}")
        if not (math.isfinite(beta_max) and beta_max >= beta_min and beta_max > 0):
            raise ValueError(f"beta_max must be finite, > 0 and >= beta_min={beta_min}, got {beta_max}")
        if beta_max / N >= 1:
            # DDPM's β_i = β1/N must stay below 1 for √(1 − β_i)
            raise ValueError(f"N must exceed beta_max={beta_max} so that beta_max/N < 1, got N={N}")
        self.beta_0, self.beta_1 = float(beta_min), float(beta_max)
        self.discrete_betas = torch.linspace(beta_min / N, beta_max / N, N, dtype=torch.float64)
        self.alphas = 1.0 - self.discrete_betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_0}, beta_max={self.beta_1}, N={self.N})"

    def with_N(self, N: int) -> _LinearBetaSDE:
        return type(self)(self.beta_0, self.beta_1, N)

    def beta(self, t: Tensor | float) -> Tensor:
        return self.beta_0 + self.check_t(t) * (self.beta_1 - self.beta_0)

    def log_mean_coeff(self, t: Tensor | float) -> Tensor:
        """m(t) = −¼t²(β1 − β0) − ½tβ0 = log α_t."""
        t = self.check_t(t)
        return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def _t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        # Root of ¼Δt² + ½β0 t = c, c = −log α, rationalised so Δ = β1 − β0 = 0 works.
        c, delta = -log_alpha, self.beta_1 - self.beta_0
        return 4 * c / (self.beta_0 + torch.sqrt(self.beta_0 ** 2 + 4 * delta * c))


class VPSDE(_LinearBetaSDE):
    """Variance preserving SDE, the continuum of DDPM; ``discretize`` is DDPM's step."""

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = self.beta(t)
        return -0.5 * beta, beta.sqrt()

    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        m = self.log_mean_coeff(t)
        return m.exp(), (-torch.expm1(2 * m)).sqrt()

    def inverse_half_log_snr(self, lam: Tensor) -> Tensor:
        # α² = sigmoid(2λ), so log α = −½ softplus(−2λ)
        return self._t_from_log_alpha(-0.5 * torch.nn.functional.softplus(-2 * lam))

    def discretize(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """DDPM step: f = (√(1 − β_i) − 1) x, G = √β_i."""
        i = self.index(self.batch_t(t, x))
        beta = self.discrete_betas.to(x.device)[i]
        f = bview(((1 - beta).sqrt() - 1).to(x.dtype), x) * x
        return f, beta.sqrt().to(x.dtype)


class SubVPSDE(_LinearBetaSDE):
    """Sub-VP SDE: the VP drift with a smaller diffusion; std 1 − e^{2m} ≤ VP's."""

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = self.check_t(t)
        beta = self.beta(t)
        discount = -torch.expm1(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t ** 2)
        return -0.5 * beta, (beta * discount).sqrt()

    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        m = self.log_mean_coeff(t)
        return m.exp(), -torch.expm1(2 * m)

    def inverse_half_log_snr(self, lam: Tensor) -> Tensor:
        # α/(1 − α²) = e^λ  =>  α = 2e^λ / (1 + √(1 + 4e^{2λ}))
        log_alpha = math.log(2) + lam - torch.log1p(torch.sqrt(1 + 4 * torch.exp(2 * lam)))
        return self._t_from_log_alpha(log_alpha)
