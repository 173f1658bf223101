r"""Stochastic approximation: finding roots and minima from noisy observations.

Robbins–Monro (1951) looks for the root of :math:`M(\theta) = \alpha` when only
noisy observations :math:`N(\theta) = M(\theta) + \text{noise}` are available:

.. math::  \theta_{n+1} = \theta_n - a_n \, (N(\theta_n) - \alpha),
           \qquad \sum a_n = \infty,\ \sum a_n^2 < \infty.

* The incremental mean :math:`m_n = m_{n-1} + (x_n - m_{n-1})/n` is Robbins–Monro
  on :math:`N(\theta) = \theta - X` with :math:`a_n = 1/n`.
* SGD is Robbins–Monro on :math:`\nabla F(\theta) = 0`.
* Kiefer–Wolfowitz (1952) minimises :math:`f` from noisy values by central
  differences with a shrinking width :math:`c_n` (2p evaluations a step).
* SPSA (Spall 1992) perturbs all p coordinates at once along a Rademacher
  direction :math:`\Delta`: :math:`\hat g_i = [y(\theta + c\Delta) -
  y(\theta - c\Delta)] / (2 c \Delta_i)`, 2 evaluations a step.
* Polyak–Juditsky (1992): steps :math:`n^{-\gamma}`, :math:`\gamma \in (1/2, 1)`,
  then average the iterates; the average reaches the optimal
  :math:`\sqrt n` rate whatever the step constant.

Every function takes tensors and returns tensors. A parameter ``theta`` may carry
leading batch dimensions (independent runs side by side); the noisy oracles
receive the whole batch at once and the ``generator`` for their noise.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "StepSize",
    "power_step",
    "running_mean",
    "robbins_monro",
    "kiefer_wolfowitz",
    "spsa",
    "spsa_gradient",
    "polyak_average",
    "rm_variance_recursion",
]

# A step-size schedule: a constant, a function of the step index n = 1, 2, ...,
# or one value per step.
StepSize = Union[float, Callable[[int], float], Sequence[float], Tensor]


def power_step(a: float, power: float = 1.0, offset: float = 0.0) -> Callable[[int], float]:
    """The schedule ``a / (n + offset) ** power`` for n = 1, 2, ...

    ``power=1`` is Robbins–Monro's a/n, ``power=0.602`` and ``0.101`` are Spall's
    SPSA gains, ``power in (0.5, 1)`` is what Polyak averaging wants.
    """
    if not math.isfinite(a) or a <= 0:
        raise ValueError(f"power_step: a must be a positive finite number, got {a}")
    if power < 0:
        raise ValueError(f"power_step: power must be >= 0, got {power}")
    if offset <= -1:
        raise ValueError(f"power_step: offset must be > -1 so that n + offset > 0, got {offset}")
    return lambda n: a / (n + offset) ** power


def _schedule(step_size: StepSize, n_steps: int, name: str) -> Callable[[int], float]:
    """Turns any StepSize into a function of n = 1..n_steps."""
    if callable(step_size):
        return step_size
    if isinstance(step_size, (int, float)):
        if step_size <= 0:
            raise ValueError(f"{name} must be positive, got {step_size}")
        return lambda n: float(step_size)
    values = torch.as_tensor(step_size, dtype=torch.float64).flatten()
    if values.numel() < n_steps:
        raise ValueError(f"{name} has {values.numel()} values but n_steps={n_steps}")
    return lambda n: float(values[n - 1])


def _check_steps(n_steps: int) -> None:
    if not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative int, got {n_steps!r}")


def _as_theta(theta0, name: str = "theta0") -> Tensor:
    theta = torch.as_tensor(theta0)
    if not theta.is_floating_point():
        theta = theta.to(torch.get_default_dtype())
    return theta.clone()


def running_mean(xs) -> Tensor:
    r"""Incremental mean of every prefix: ``out[n-1] = mean(xs[:n])``.

    Computed by the recursion :math:`m_n = m_{n-1} + (x_n - m_{n-1})/n`, never by
    summing, so it is the Robbins–Monro iterate with :math:`a_n = 1/n`.

    Args:
        xs: (n,) a sequence, or (n, *batch) independent sequences along dim 0.
    Returns:
        (n, *batch) the mean of each prefix, in xs's floating dtype.
    """
    x = torch.as_tensor(xs)
    if x.dim() == 0:
        raise ValueError("xs must have a sequence dimension, got a 0-dim tensor")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    out = torch.empty_like(x)
    if x.shape[0] == 0:
        return out
    m = x[0].clone()
    out[0] = m
    for n in range(2, x.shape[0] + 1):
        m += (x[n - 1] - m) / n
        out[n - 1] = m
    return out


def robbins_monro(
    observe: Callable[[Tensor, torch.Generator | None], Tensor],
    theta0,
    n_steps: int,
    step_size: StepSize,
    generator: torch.Generator | None = None,
    target: float = 0.0,
) -> Tensor:
    r"""Root of :math:`M(\theta) = \alpha` from noisy observations.

    Args:
        observe: ``observe(theta, generator)`` returns a noisy observation of
            :math:`M(\theta)` with theta's shape.
        theta0: starting point, any shape (leading dims may index runs).
        n_steps: number of updates.
        step_size: :math:`a_n` as a constant, a function of n = 1, 2, ..., or
            one value per step.
        generator: passed to ``observe`` for its noise.
        target: :math:`\alpha`.
    Returns:
        (n_steps + 1, *theta0.shape) the iterates, ``[0]`` being theta0.
    """
    _check_steps(n_steps)
    a = _schedule(step_size, n_steps, "step_size")
    theta = _as_theta(theta0)
    iterates = torch.empty((n_steps + 1, *theta.shape), dtype=theta.dtype)
    iterates[0] = theta
    for n in range(1, n_steps + 1):
        y = observe(theta, generator)
        if y.shape != theta.shape:
            raise ValueError(f"observe returned shape {tuple(y.shape)}, expected theta's {tuple(theta.shape)}")
        theta = theta - a(n) * (y - target)
        iterates[n] = theta
    return iterates


def kiefer_wolfowitz(
    f: Callable[[Tensor, torch.Generator | None], Tensor],
    theta0,
    n_steps: int,
    step_size: StepSize,
    perturbation: StepSize,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Minimise :math:`E[y(\theta)]` from noisy values by central differences.

    :math:`\hat g_i = [y(\theta + c_n e_i) - y(\theta - c_n e_i)] / (2 c_n)`, then
    :math:`\theta \leftarrow \theta - a_n \hat g`: 2p evaluations a step.
    Convergence needs :math:`c_n \to 0`, :math:`\sum a_n = \infty`,
    :math:`\sum a_n c_n < \infty`, :math:`\sum a_n^2/c_n^2 < \infty`
    (e.g. a/n and c/n^{1/3}).

    Args:
        f: ``f(theta, generator)`` on (*batch, p) returns (*batch) noisy values.
        theta0: (*batch, p) starting point.
        step_size: :math:`a_n`; perturbation: :math:`c_n` (same forms as
            :func:`robbins_monro`).
    Returns:
        (n_steps + 1, *batch, p) iterates.
    """
    _check_steps(n_steps)
    a = _schedule(step_size, n_steps, "step_size")
    c = _schedule(perturbation, n_steps, "perturbation")
    theta = _as_theta(theta0)
    if theta.dim() == 0:
        raise ValueError("theta0 must have a last dimension of parameters, got a 0-dim tensor")
    p = theta.shape[-1]
    eye = torch.eye(p, dtype=theta.dtype)
    iterates = torch.empty((n_steps + 1, *theta.shape), dtype=theta.dtype)
    iterates[0] = theta
    for n in range(1, n_steps + 1):
        c_n = c(n)
        g_hat = torch.empty_like(theta)
        for i in range(p):
            y_plus = f(theta + c_n * eye[i], generator)
            y_minus = f(theta - c_n * eye[i], generator)
            g_hat[..., i] = (y_plus - y_minus) / (2 * c_n)
        theta = theta - a(n) * g_hat
        iterates[n] = theta
    return iterates


def spsa_gradient(
    f: Callable[[Tensor, torch.Generator | None], Tensor],
    theta: Tensor,
    c: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""One SPSA gradient estimate at theta (*batch, p), from 2 evaluations.

    :math:`\Delta_i = \pm 1` with probability 1/2 each, drawn from ``generator``.
    On a linear f with gradient g it is unbiased and
    :math:`\mathrm{Var}(\hat g_i) = \|g\|^2 - g_i^2`.
    """
    if c <= 0:
        raise ValueError(f"perturbation c must be positive, got {c}")
    bits = torch.randint(0, 2, theta.shape, generator=generator)
    delta = (2 * bits - 1).to(theta.dtype)  # Rademacher
    y_plus = f(theta + c * delta, generator)
    y_minus = f(theta - c * delta, generator)
    return ((y_plus - y_minus) / (2 * c)).unsqueeze(-1) / delta


def spsa(
    f: Callable[[Tensor, torch.Generator | None], Tensor],
    theta0,
    n_steps: int,
    step_size: StepSize | None = None,
    perturbation: StepSize | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Simultaneous-perturbation stochastic approximation (Spall 1992).

    Defaults are Spall's gains :math:`a_k = 0.1/(k + 10)^{0.602}` and
    :math:`c_k = 0.1/k^{0.101}`; pass your own for your problem's scale.

    Args:
        f: ``f(theta, generator)`` on (*batch, p) returns (*batch) noisy values.
        theta0: (*batch, p) starting point.
    Returns:
        (n_steps + 1, *batch, p) iterates.
    """
    _check_steps(n_steps)
    a = _schedule(step_size if step_size is not None else power_step(0.1, 0.602, offset=10), n_steps, "step_size")
    c = _schedule(perturbation if perturbation is not None else power_step(0.1, 0.101), n_steps, "perturbation")
    theta = _as_theta(theta0)
    if theta.dim() == 0:
        raise ValueError("theta0 must have a last dimension of parameters, got a 0-dim tensor")
    iterates = torch.empty((n_steps + 1, *theta.shape), dtype=theta.dtype)
    iterates[0] = theta
    for n in range(1, n_steps + 1):
        theta = theta - a(n) * spsa_gradient(f, theta, c(n), generator)
        iterates[n] = theta
    return iterates


def polyak_average(iterates) -> Tensor:
    r"""Polyak–Ruppert average of every prefix: :math:`\bar\theta_n = \frac1n
    \sum_{k \le n} \theta_k`.

    Pass the iterates to average (usually ``iterates[1:]``, leaving out the
    starting point). (n, *shape) in, (n, *shape) out.
    """
    return running_mean(iterates)


def rm_variance_recursion(a: float, slope: float, sigma: float, n_steps: int, v0: float = 0.0) -> Tensor:
    r"""Exact :math:`V_n = E(\theta_n - \theta^*)^2` of Robbins–Monro with a/n steps
    on :math:`N(\theta) = M'(\theta - \theta^*) + \sigma\xi`:

    .. math:: V_n = (1 - a M'/n)^2 V_{n-1} + a^2\sigma^2/n^2.

    Returns (n_steps + 1,) with ``[0] = v0``, in float64.
    """
    v = torch.empty(n_steps + 1, dtype=torch.float64)
    v[0] = v0
    prev = float(v0)
    for n in range(1, n_steps + 1):
        prev = (1 - a * slope / n) ** 2 * prev + (a * sigma / n) ** 2
        v[n] = prev
    return v
