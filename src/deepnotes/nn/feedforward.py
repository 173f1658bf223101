"""The transformer's position-wise feed-forward block, plain or gated.

Plain (Vaswani et al. 2017):      FFN(x)     = f(x W1) W2,              W1: d x d_ff
Gated (Shazeer, arXiv 2002.05202): FFN_GLU(x) = (f(x W) * (x V)) W2,     W, V: d x h

A gated block has three matrices instead of two, so at the same d_ff it has
1.5x the parameters. Shazeer (and LLaMA after him) shrinks the hidden width to
h = 2/3 d_ff, which makes 3 d h = 2 d d_ff: the parameter count of the plain
block. `FeedForward` does that by default (match_params=True); with d_ff a
multiple of 3 and no biases the two counts are equal exactly.

W and V are stored as one Linear of width 2h whose output is split in halves
[a, b] by the GLU functions in activations.py: a = x W, b = x V.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .activations import ACTIVATIONS, GATED

__all__ = ["FeedForward", "gated_hidden"]


def gated_hidden(d_ff: int) -> int:
    """Hidden width h of a GLU block with the parameters of a plain d_ff block: floor(2 d_ff / 3)."""
    return (2 * d_ff) // 3


class FeedForward(nn.Module):
    """(..., d_model) -> (..., d_model).

    activation: a name in ACTIVATIONS ("relu", "gelu", "gelu_tanh", "silu", ..., or a
    gated one: "glu", "reglu", "geglu", "swiglu", "bilinear_glu") or a callable applied
    elementwise. bias: False by default (Shazeer's and LLaMA's choice; it keeps the
    parameter match exact).
    """

    def __init__(self, d_model: int, d_ff: int, activation: str | Callable = "relu", bias: bool = False,
                 dropout: float = 0.0, match_params: bool = True, device=None, dtype=None):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_ff", d_ff)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"FeedForward: {name} must be a positive int, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"FeedForward: dropout must be in [0, 1), got {dropout}")
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(f"FeedForward: unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
            self.activation_name = activation
            self.act = ACTIVATIONS[activation]
            self.gated = activation in GATED
        elif callable(activation):
            self.activation_name = getattr(activation, "__name__", type(activation).__name__)
            self.act = activation
            self.gated = False
        else:
            raise TypeError(f"FeedForward: activation must be a name or a callable, got {type(activation).__name__}")
        self.d_model, self.d_ff = d_model, d_ff
        self.d_hidden = gated_hidden(d_ff) if (self.gated and match_params) else d_ff
        if self.d_hidden < 1:
            raise ValueError(f"FeedForward: d_ff={d_ff} leaves no hidden units after the 2/3 scaling of a gated block")
        width_in = 2 * self.d_hidden if self.gated else self.d_hidden
        self.w_in = nn.Linear(d_model, width_in, bias=bias, device=device, dtype=dtype)  # [W | V] when gated
        self.w_out = nn.Linear(self.d_hidden, d_model, bias=bias, device=device, dtype=dtype)  # W2
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"FeedForward: x must end in d_model={self.d_model}, got shape {tuple(x.shape)}")
        h = self.act(self.w_in(x))  # (..., d_model) -> (..., d_ff) or (..., 2h) -> (..., h)
        return self.w_out(self.dropout(h))  # (..., d_hidden) -> (..., d_model)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_hidden={self.d_hidden}, activation={self.activation_name!r}"
