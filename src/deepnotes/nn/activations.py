"""Activation functions, from the perceptron's step to SwiGLU.

Each is written from elementary tensor ops (exp, expm1, log1p, erf, where,
clamp) so the code shows the math; torch's function of the same name is the
test reference (tests/nn/test_activations.py). Defaults and gradient
conventions are torch's (references/fundamentals.md, section c):

    step(x)        = H(x)                      (derivative 0 everywhere)
    sigmoid(x)     = 1 / (1 + e^-x)            tanh(x) = (e^2x - 1) / (e^2x + 1)
    hardtanh(x)    = clamp(x, -1, 1)           relu6(x) = clamp(x, 0, 6)
    relu(x)        = max(0, x)                 leaky_relu(x) = x if x > 0 else a x, a = 0.01
    prelu(x, w)    = leaky_relu with a learned slope per channel (dim 1)
    rrelu(x)       = slope ~ U(1/8, 1/3) in training, (l + u)/2 in eval
    elu(x)         = x if x > 0 else alpha (e^x - 1)
    selu(x)        = scale * elu(x, alpha), alpha = 1.6732632..., scale = 1.0507009...
    celu(x)        = max(0, x) + min(0, alpha (e^{x/alpha} - 1))
    gelu(x)        = x Phi(x) = x/2 (1 + erf(x/sqrt 2));  tanh form 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))
    silu(x)        = x sigma(x)                swish(x, beta) = x sigma(beta x)
    mish(x)        = x tanh(softplus(x))       softplus(x) = log(1 + e^{beta x}) / beta, x once beta x > 20
    softsign(x)    = x / (1 + |x|)             logsigmoid(x) = -softplus(-x)
    hardsigmoid(x) = relu6(x + 3) / 6          hardswish(x) = x relu6(x + 3) / 6
    GLU family on x = [a, b] (last dim halved): glu = a sigma(b); reglu, geglu, swiglu,
    bilinear_glu = f(a) b with f = relu, gelu, silu, identity (Shazeer, arXiv 2002.05202).

Gradients at the kinks follow torch: ReLU'(0) = 0, LeakyReLU'(0) = slope, ELU'(0)
= alpha, and Hardtanh/ReLU6/Hardsigmoid have zero gradient *at* their bounds.
`torch.where` routes the gradient of the branch it picks, so choosing strict or
inclusive comparisons is enough; only `step` needs a custom autograd Function
(torch.heaviside has no derivative). Branches that could overflow see clamped
inputs, so the branch `where` discards never produces inf or NaN in backward.
float16/bfloat16 inputs are computed in float32 and rounded once, as torch's
CPU kernels do. The Module of each function (ReLU, GELU, PReLU, SwiGLU, ...) is
in activation_modules.py and re-exported here.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from ._errors import DimOutOfRangeError, InvalidShapeError

# The Modules live in activation_modules.py and are re-exported by __getattr__ below.
_MODULES = ("Step", "Sigmoid", "Tanh", "Hardtanh", "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU",
            "CELU", "GELU", "SiLU", "Swish", "Mish", "Softplus", "Softsign", "Hardsigmoid", "Hardswish",
            "LogSigmoid", "GLU", "ReGLU", "GEGLU", "SwiGLU", "BilinearGLU")
__all__ = [
    "step", "sigmoid", "tanh", "hardtanh", "relu", "relu6", "leaky_relu", "prelu", "rrelu",
    "elu", "selu", "celu", "gelu", "silu", "swish", "mish", "softplus", "softsign",
    "hardsigmoid", "hardswish", "logsigmoid", "glu", "reglu", "geglu", "swiglu", "bilinear_glu",
    *_MODULES, "ACTIVATIONS", "GATED", "SELU_ALPHA", "SELU_SCALE", "FeedForward",
]

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _opmath(fn: Callable) -> Callable:
    """Checks x is a floating tensor; computes half/bfloat16 in float32 and rounds once."""

    @functools.wraps(fn)
    def wrapper(x, *args, **kwargs):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{fn.__name__}: x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{fn.__name__}: x must be a floating-point tensor, got dtype {x.dtype}")
        if x.dtype in _LOW_PRECISION:
            return fn(x.float(), *args, **kwargs).to(x.dtype)
        return fn(x, *args, **kwargs)

    return wrapper


# --- piecewise linear ------------------------------------------------------------

class _Heaviside(torch.autograd.Function):
    """H(x) with H(0) = value; derivative 0 (the a.e. derivative; torch.heaviside has none)."""

    @staticmethod
    def forward(ctx, x, value):
        return (x > 0).to(x.dtype) + (x == 0).to(x.dtype) * value

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad), None


@_opmath
def step(x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """The perceptron's threshold unit: 1 for x > 0, `value` at 0, 0 below (NaN -> 0, as torch.heaviside)."""
    return _Heaviside.apply(x, value)


@_opmath
def hardtanh(x: torch.Tensor, min_val: float = -1.0, max_val: float = 1.0) -> torch.Tensor:
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val must be <= max_val, got min_val={min_val}, max_val={max_val}")
    # `clamp` would pass the gradient at the bounds; torch's hardtanh does not (inclusive zero).
    return torch.where(x <= min_val, min_val, torch.where(x >= max_val, max_val, x))


def relu6(x: torch.Tensor) -> torch.Tensor:
    return hardtanh(x, 0.0, 6.0)


@_opmath
def relu(x: torch.Tensor) -> torch.Tensor:
    # x <= 0 picks the constant branch at 0, so ReLU'(0) = 0; NaN falls through to x.
    return torch.where(x <= 0, 0.0, x)


@_opmath
def leaky_relu(x: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    return torch.where(x > 0, x, x * negative_slope)


@_opmath
def prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU with learned slopes: one (broadcast everywhere) or C of them on dim 1.

    x: (N, C, *) or any shape when weight has one element; weight: (C,) or (1,).
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"prelu: weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.numel() == 1:
        w = weight.reshape(())
    else:
        channels = x.shape[1] if x.dim() >= 2 else 1
        if weight.numel() != channels:
            raise InvalidShapeError(
                f"prelu: weight has {weight.numel()} parameters, so x needs {weight.numel()} channels on "
                f"dim 1, got x of shape {tuple(x.shape)}")
        w = weight.reshape(1, -1, *([1] * (x.dim() - 2)))  # (C,) -> (1, C, 1, ..., 1)
    return torch.where(x > 0, x, w.to(x.dtype) * x)


@_opmath
def rrelu(x: torch.Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3, training: bool = False,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomised leaky ReLU (Xu et al. 2015): a ~ U(lower, upper) per element in training, (l+u)/2 in eval."""
    if not lower <= upper:
        raise ValueError(f"rrelu: lower must be <= upper, got lower={lower}, upper={upper}")
    if not training:
        return leaky_relu(x, (lower + upper) / 2)
    a = torch.empty_like(x).uniform_(lower, upper, generator=generator)
    return torch.where(x > 0, x, a * x)  # as torch: the slope also applies at x = 0


# --- smooth ------------------------------------------------------------------------

@_opmath
def sigmoid(x: torch.Tensor) -> torch.Tensor:
    # 1/(1 + e^-x) on x >= 0 and e^x/(1 + e^x) on x < 0: each exp sees a non-positive argument.
    p, n = x.clamp(min=0), x.clamp(max=0)
    en = torch.exp(n)
    return torch.where(x >= 0, 1 / (1 + torch.exp(-p)), en / (1 + en))


@_opmath
def tanh(x: torch.Tensor) -> torch.Tensor:
    # tanh(x) = -expm1(-2x) / (2 + expm1(-2x)) for x >= 0, odd for x < 0: expm1 keeps
    # full relative precision near 0 and the argument is never positive.
    p, n = x.clamp(min=0), x.clamp(max=0)
    up, un = torch.expm1(-2 * p), torch.expm1(2 * n)
    return torch.where(x >= 0, -up / (2 + up), un / (2 + un))


@_opmath
def elu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    # x <= 0 takes the exponential branch, so ELU'(0) = alpha as in torch.
    return torch.where(x > 0, x, alpha * torch.expm1(x.clamp(max=0)))


def selu(x: torch.Tensor) -> torch.Tensor:
    """Self-normalising ELU (Klambauer et al. 2017) with its exact constants."""
    return SELU_SCALE * elu(x, SELU_ALPHA)


@_opmath
def celu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    if alpha == 0:
        raise ValueError("celu: alpha must be non-zero (it divides x), got alpha=0")
    return torch.where(x > 0, x, alpha * torch.expm1(x.clamp(max=0) / alpha))


@_opmath
def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """x Phi(x) (Hendrycks & Gimpel 2016); approximate="tanh" is GPT-2's gelu_new."""
    if approximate == "none":
        return 0.5 * x * (1 + torch.erf(x * math.sqrt(0.5)))
    if approximate == "tanh":
        return 0.5 * x * (1 + tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


@_opmath
def silu(x: torch.Tensor) -> torch.Tensor:
    return x * sigmoid(x)


@_opmath
def swish(x: torch.Tensor, beta: float | torch.Tensor = 1.0) -> torch.Tensor:
    """x sigma(beta x) (Ramachandran et al. 2017); beta = 1 is SiLU, beta -> inf is ReLU."""
    return x * sigmoid(beta * x)


@_opmath
def softplus(x: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    if beta == 0:
        raise ValueError("softplus: beta must be non-zero (it divides the result), got beta=0")
    bx = x * beta
    # Linear past the threshold (torch's rule); the log branch sees a clamped input so its
    # discarded values stay finite and backward has no 0 * inf.
    return torch.where(bx > threshold, x, torch.log1p(torch.exp(bx.clamp(max=threshold))) / beta)


@_opmath
def mish(x: torch.Tensor) -> torch.Tensor:
    """x tanh(softplus(x)) (Misra 2019)."""
    return x * tanh(softplus(x))


@_opmath
def softsign(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + x.abs())


@_opmath
def hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= -3, 0.0, torch.where(x >= 3, 1.0, (x + 3) / 6))


@_opmath
def hardswish(x: torch.Tensor) -> torch.Tensor:
    """x relu6(x + 3) / 6 (MobileNetV3). Gradient 0 at -3 and 1 at 3, as torch."""
    return torch.where(x <= -3, 0.0, torch.where(x >= 3, x, x * (x + 3) / 6))


@_opmath
def logsigmoid(x: torch.Tensor) -> torch.Tensor:
    # log sigma(x) = x - log1p(e^x) for x < 0 and -log1p(e^-x) for x >= 0: exact for large |x|.
    p, n = x.clamp(min=0), x.clamp(max=0)
    return torch.where(x < 0, n - torch.log1p(torch.exp(n)), -torch.log1p(torch.exp(-p)))


# --- gated linear units: x = [a, b] along `dim`, out = f(a) * b -------------------------

def _halves(x: torch.Tensor, dim: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() == 0:
        raise InvalidShapeError(f"{name}: x must have at least one dimension to halve, got a 0-d tensor")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{name}: dim must be an int, got {dim!r}")
    if not -x.dim() <= dim < x.dim():
        raise DimOutOfRangeError(f"{name}: dim must be in [{-x.dim()}, {x.dim() - 1}] for x of shape {tuple(x.shape)}, "
                         f"got dim={dim}")
    size = x.shape[dim]
    if size % 2:
        raise InvalidShapeError(
            f"{name}: dimension {dim} of x must have even size to split into halves a, b, got size {size} "
            f"(x of shape {tuple(x.shape)})")
    h = size // 2
    return x.narrow(dim, 0, h), x.narrow(dim, h, h)  # (..., 2h, ...) -> 2 x (..., h, ...)


@_opmath
def glu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Dauphin et al. 2017: a sigma(b), as torch.nn.functional.glu."""
    a, b = _halves(x, dim, "glu")
    return a * sigmoid(b)


@_opmath
def reglu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    a, b = _halves(x, dim, "reglu")
    return relu(a) * b


@_opmath
def geglu(x: torch.Tensor, dim: int = -1, approximate: str = "none") -> torch.Tensor:
    """gelu(a) b; approximate="tanh" is Gemma's GeGLU."""
    a, b = _halves(x, dim, "geglu")
    return gelu(a, approximate) * b


@_opmath
def swiglu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """silu(a) b, the feed-forward of LLaMA and PaLM."""
    a, b = _halves(x, dim, "swiglu")
    return silu(a) * b


@_opmath
def bilinear_glu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    a, b = _halves(x, dim, "bilinear_glu")
    return a * b


# Name -> function with its defaults (what FeedForward(activation=...) and the experiments look up).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "step": step, "sigmoid": sigmoid, "tanh": tanh, "hardtanh": hardtanh, "relu": relu, "relu6": relu6,
    "leaky_relu": leaky_relu, "rrelu": rrelu, "elu": elu, "selu": selu, "celu": celu, "gelu": gelu,
    "gelu_tanh": functools.partial(gelu, approximate="tanh"), "silu": silu, "swish": swish, "mish": mish,
    "softplus": softplus, "softsign": softsign, "hardsigmoid": hardsigmoid, "hardswish": hardswish,
    "logsigmoid": logsigmoid, "glu": glu, "reglu": reglu, "geglu": geglu, "swiglu": swiglu,
    "bilinear_glu": bilinear_glu,
}
# The names that halve their input's last dimension.
GATED: frozenset[str] = frozenset({"glu", "reglu", "geglu", "swiglu", "bilinear_glu"})


def __getattr__(name: str):
    # The Modules (activation_modules.py) and FeedForward (feedforward.py) import this file,
    # so they are re-exported lazily (PEP 562) rather than imported at the top.
    if name in _MODULES:
        from . import activation_modules

        return getattr(activation_modules, name)
    if name == "FeedForward":
        from .feedforward import FeedForward

        return FeedForward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODULES) | {"FeedForward"})
