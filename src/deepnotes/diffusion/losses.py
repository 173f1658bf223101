r"""Score-matching objectives: denoising (continuous time), sliced, and DDPM's epsilon loss.

Denoising score matching over an SDE (Song et al. 2021, score_sde ``losses.py``):
with :math:`t \sim U(\epsilon, T)`, :math:`z \sim N(0, I)` and the marginal
:math:`x_t = \mu(x_0, t) + \sigma(t) z`,

.. math::  L_{\text{default}} = \mathbb{E} \,\| s_\theta(x_t, t)\,\sigma(t) + z \|^2, \qquad
           L_{\text{likelihood}} = \mathbb{E} \,\| s_\theta(x_t, t) + z / \sigma(t) \|^2 \, g(t)^2,

the second being ScoreFlow's likelihood weighting (arXiv 2101.09258), a bound on the
negative log-likelihood. ``reduce="mean"`` averages over the non-batch dimensions,
``reduce="sum"`` takes half their sum (score_sde's ``reduce_mean=False``).

Sliced score matching (Song, Garg, Shi & Ermon 2019) with projections v, E[v vᵀ] = I:

.. math::  J(\theta) = \mathbb{E}_{x, v}\big[ v^\top \nabla_x (v^\top s_\theta(x)) + \tfrac12 (v^\top s_\theta(x))^2 \big]
           \;(\text{SSM-VR: } \tfrac12 \|s_\theta(x)\|^2 \text{ for the second term}),

whose expectation is :math:`\mathbb{E}[\operatorname{tr}\nabla_x s_\theta + \tfrac12\|s_\theta\|^2]`
(Hyvärinen's objective), minimised by the true score up to a constant.

DDPM's simple loss (Ho, Jain & Abbeel 2020, Algorithm 1): :math:`i \sim U\{0..N-1\}`,
:math:`x_i = \sqrt{\bar\alpha_i} x_0 + \sqrt{1 - \bar\alpha_i}\,\epsilon`,
:math:`L = \mathbb{E}\|\epsilon - \epsilon_\theta(x_i, i)\|^2` (mean over elements).
The network's timestep label is the 0-based integer index ``i`` as a float;
:func:`deepnotes.diffusion.ddpm.eps_to_score` feeds the same network ``t·(N−1)``
(score_sde's "999t" label), so one epsilon-network serves DDPM and the VP SDE.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .sde import bview

__all__ = ["ddpm_loss", "dsm_loss", "ssm_loss"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _check_batch(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor of shape (B, ...) with B >= 1, got {got}")


def _check_output(s: Tensor, x: Tensor, name: str) -> None:
    if not isinstance(s, Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
        raise ValueError(f"{name} must return a tensor of the input's shape {tuple(x.shape)}, got {got}")


def dsm_loss(score_fn: ScoreFn, sde, x0: Tensor, *, eps: float = 1e-5, weighting: str = "default",
             reduce: str = "mean", generator: torch.Generator | None = None,
             t: Tensor | float | None = None) -> Tensor:
    """Continuous-time denoising score matching, score_sde's ``get_sde_loss_fn``.

    Args:
        score_fn: ``score_fn(x, t)`` with x (B, ...) and t (B,), returning (B, ...).
        sde: an SDE with ``marginal_prob(x0, t) -> (mean, std)``, ``sde(x, t) -> (drift, g)`` and ``T``.
        x0: data, (B, ...).
        eps: smallest time; t ~ U(eps, T) per sample.
        weighting: ``"default"`` (λ(t) = σ(t)²) or ``"likelihood"`` (λ(t) = g(t)²).
        reduce: ``"mean"`` over non-batch dims, or ``"sum"`` (half the sum).
        generator: the source of t and z.
        t: optional fixed times, a float or (B,), replacing the uniform draw (for loss floors and plots).

    Returns:
        The batch mean of the per-sample losses, a 0-dim tensor.
    """
    _check_batch(x0, "x0")
    if weighting not in ("default", "likelihood"):
        raise ValueError(f"weighting must be 'default' or 'likelihood', got {weighting!r}")
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    T = float(sde.T)
    if not 0.0 < eps < T:
        raise ValueError(f"eps must be in (0, T={T}), got {eps}")
    B = x0.shape[0]
    if t is None:
        t = torch.rand(B, generator=generator, device=x0.device, dtype=x0.dtype) * (T - eps) + eps
    else:
        t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
        t = t.expand(B) if t.dim() == 0 else t
        if t.shape != (B,) or not bool(((t > 0) & (t <= T)).all()):
            raise ValueError(f"t must be a float or a ({B},) tensor in (0, T={T}], got shape "
                             f"{tuple(t.shape)}, values in [{t.min().item()}, {t.max().item()}]")
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    mean, std = sde.marginal_prob(x0, t)          # (B, ...), (B,)
    std = bview(std, x0)                          # (B,) -> (B, 1, ..., 1)
    x_t = mean + std * z                          # (B, ...)
    s = score_fn(x_t, t)
    _check_output(s, x0, "score_fn")
    if weighting == "default":
        losses = torch.square(s * std + z)
    else:
        losses = torch.square(s + z / std)
    losses = losses.reshape(B, -1)                # (B, ...) -> (B, D)
    losses = losses.mean(dim=1) if reduce == "mean" else 0.5 * losses.sum(dim=1)
    if weighting == "likelihood":
        g = sde.sde(torch.zeros_like(x0), t)[1]   # (B,)
        losses = losses * g ** 2
    return losses.mean()


def _projections(shape: torch.Size, distribution: str, generator, device, dtype) -> Tensor:
    if distribution == "rademacher":
        return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def ssm_loss(score_fn: Callable[[Tensor], Tensor], x: Tensor, *, n_projections: int = 1,
             distribution: str = "rademacher", variance_reduction: bool = False,
             generator: torch.Generator | None = None) -> Tensor:
    """Sliced score matching for a plain ``score_fn(x)`` (ncsn ``losses/sliced_sm.py``).

    Projections are unnormalised (Rademacher ±1 or standard Gaussian, E[v vᵀ] = I), so the
    expectation is Hyvärinen's :math:`\\mathbb{E}[\\operatorname{tr}\\nabla s + \\tfrac12\\|s\\|^2]`
    summed over all D non-batch elements (for N(0, s²I) and its exact score: −D/(2s²)).
    ncsn's ``sliced_score_estimation`` puts v on the unit sphere instead, which divides
    the expectation by D; its ``_vr`` variant uses raw Gaussian v, as here.
    The Jacobian-vector term is taken by autograd with ``create_graph=True``, so the loss
    trains the parameters inside ``score_fn``. For a noise-conditional model, fix the noise
    level inside ``score_fn`` (e.g. ``lambda x: net(x, sigma)``).

    Args:
        score_fn: x (M, ...) -> score (M, ...); it is called once on the n_projections copies of x.
        x: data, (B, ...).
        n_projections: projections per sample.
        distribution: ``"rademacher"`` or ``"gaussian"``.
        variance_reduction: SSM-VR, which replaces ½(vᵀs)² by its expectation ½‖s‖².
        generator: the source of the projections.

    Returns:
        The mean over samples and projections, a 0-dim tensor.
    """
    _check_batch(x, "x")
    if int(n_projections) != n_projections or n_projections < 1:
        raise ValueError(f"n_projections must be an integer >= 1, got {n_projections}")
    if distribution not in ("rademacher", "gaussian"):
        raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")
    B, P = x.shape[0], int(n_projections)
    # (B, ...) -> (P*B, ...): projection-major copies, each with its own v
    x_rep = x.detach().repeat(P, *([1] * (x.dim() - 1))).requires_grad_(True)
    v = _projections(x_rep.shape, distribution, generator, x.device, x.dtype)
    with torch.enable_grad():
        s = score_fn(x_rep)
        _check_output(s, x_rep, "score_fn")
        sv = (s * v).reshape(P * B, -1).sum(dim=1)                  # (P*B,) vᵀs
        grad_sv = torch.autograd.grad(sv.sum(), x_rep, create_graph=True)[0]
    loss_jac = (v * grad_sv).reshape(P * B, -1).sum(dim=1)          # vᵀ ∇ₓ(vᵀs)
    if variance_reduction:
        loss_sq = 0.5 * s.reshape(P * B, -1).square().sum(dim=1)
    else:
        loss_sq = 0.5 * sv.square()
    return (loss_jac + loss_sq).mean()


def ddpm_loss(eps_model: Callable[[Tensor, Tensor], Tensor], ddpm, x0: Tensor, *,
              generator: torch.Generator | None = None) -> Tensor:
    """DDPM's simple epsilon-prediction loss (Ho et al. 2020, Algorithm 1).

    Args:
        eps_model: ``eps_model(x_i, label)`` with x_i (B, ...) and label (B,), the 0-based
            timestep index i as a float in [0, N−1]; returns the predicted noise (B, ...).
        ddpm: a :class:`deepnotes.diffusion.ddpm.DDPM` (its ``N`` and ``q_sample``).
        x0: data, (B, ...).
        generator: the source of i and epsilon.

    Returns:
        ``mean ‖ε − ε_θ(x_i, i)‖²`` over all elements, a 0-dim tensor.
    """
    _check_batch(x0, "x0")
    B = x0.shape[0]
    i = torch.randint(0, ddpm.N, (B,), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_i = ddpm.q_sample(x0, i, noise)
    pred = eps_model(x_i, i.to(x0.dtype))
    _check_output(pred, x0, "eps_model")
    return torch.square(noise - pred).mean()
