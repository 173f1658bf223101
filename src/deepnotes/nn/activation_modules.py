"""The nn.Module form of every activation in activations.py (ReLU, GELU, PReLU, SwiGLU, ...).

A parameter-free Module fixes its function's keyword arguments at construction;
PReLU owns its slopes (init 0.25, as torch) and RReLU draws random slopes in
training from the generator it is given and uses their mean in eval.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .activations import (
    bilinear_glu, celu, elu, geglu, gelu, glu, hardsigmoid, hardswish, hardtanh, leaky_relu, logsigmoid, mish, prelu,
    reglu, relu, relu6, rrelu, selu, sigmoid, silu, softplus, softsign, step, swiglu, swish, tanh,
)

__all__ = ["Step", "Sigmoid", "Tanh", "Hardtanh", "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Swish", "Mish", "Softplus", "Softsign", "Hardsigmoid", "Hardswish", "LogSigmoid", "GLU", "ReGLU", "GEGLU", "SwiGLU", "BilinearGLU"]


class _Activation(nn.Module):
    """Applies `fn` with the keyword arguments fixed at construction. Shape: any -> same."""

    fn: Callable = staticmethod(lambda x: x)

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


def _module(name: str, fn: Callable) -> type:
    """A Module class for an `fn` without hyperparameters (its constructor takes no arguments)."""

    def __init__(self):
        _Activation.__init__(self)

    return type(name, (_Activation,), {"fn": staticmethod(fn), "__init__": __init__, "__module__": __name__,
                                       "__qualname__": name, "__doc__": f"Module form of `{fn.__name__}`."})


class Step(_Activation):
    fn = staticmethod(step)

    def __init__(self, value: float = 0.0):
        super().__init__(value=value)


class Hardtanh(_Activation):
    fn = staticmethod(hardtanh)

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0):
        hardtanh(torch.zeros(()), min_val, max_val)  # validates at construction
        super().__init__(min_val=min_val, max_val=max_val)


class LeakyReLU(_Activation):
    fn = staticmethod(leaky_relu)

    def __init__(self, negative_slope: float = 0.01):
        super().__init__(negative_slope=negative_slope)


class ELU(_Activation):
    fn = staticmethod(elu)

    def __init__(self, alpha: float = 1.0):
        super().__init__(alpha=alpha)


class CELU(_Activation):
    fn = staticmethod(celu)

    def __init__(self, alpha: float = 1.0):
        celu(torch.zeros(()), alpha)
        super().__init__(alpha=alpha)


class GELU(_Activation):
    fn = staticmethod(gelu)

    def __init__(self, approximate: str = "none"):
        gelu(torch.zeros(()), approximate)
        super().__init__(approximate=approximate)


class Swish(_Activation):
    fn = staticmethod(swish)

    def __init__(self, beta: float = 1.0):
        super().__init__(beta=beta)


class Softplus(_Activation):
    fn = staticmethod(softplus)

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        softplus(torch.zeros(()), beta, threshold)
        super().__init__(beta=beta, threshold=threshold)


class GLU(_Activation):
    fn = staticmethod(glu)

    def __init__(self, dim: int = -1):
        super().__init__(dim=dim)


class GEGLU(_Activation):
    fn = staticmethod(geglu)

    def __init__(self, dim: int = -1, approximate: str = "none"):
        super().__init__(dim=dim, approximate=approximate)


class PReLU(nn.Module):
    """Learned negative slopes, one shared or one per channel (dim 1); init 0.25 as torch."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, device=None, dtype=None):
        super().__init__()
        if not isinstance(num_parameters, int) or num_parameters < 1:
            raise ValueError(f"PReLU: num_parameters must be a positive int, got {num_parameters!r}")
        self.num_parameters = num_parameters
        self.weight = nn.Parameter(torch.full((num_parameters,), float(init), device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return prelu(x, self.weight)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"


class RReLU(nn.Module):
    """Random slopes in training (drawn from `generator`), their mean in eval."""

    def __init__(self, lower: float = 1.0 / 8, upper: float = 1.0 / 3, generator: torch.Generator | None = None):
        super().__init__()
        if not lower <= upper:
            raise ValueError(f"RReLU: lower must be <= upper, got lower={lower}, upper={upper}")
        self.lower, self.upper, self.generator = lower, upper, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rrelu(x, self.lower, self.upper, training=self.training, generator=self.generator)

    def extra_repr(self) -> str:
        return f"lower={self.lower}, upper={self.upper}"


Sigmoid = _module("Sigmoid", sigmoid)
Tanh = _module("Tanh", tanh)
ReLU = _module("ReLU", relu)
ReLU6 = _module("ReLU6", relu6)
SELU = _module("SELU", selu)
SiLU = _module("SiLU", silu)
Mish = _module("Mish", mish)
Softsign = _module("Softsign", softsign)
Hardsigmoid = _module("Hardsigmoid", hardsigmoid)
Hardswish = _module("Hardswish", hardswish)
LogSigmoid = _module("LogSigmoid", logsigmoid)
ReGLU = _module("ReGLU", reglu)
SwiGLU = _module("SwiGLU", swiglu)
BilinearGLU = _module("BilinearGLU", bilinear_glu)
