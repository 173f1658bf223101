r"""Exponential moving average of a model's weights.

.. math:: \bar\theta \leftarrow d_n \bar\theta + (1 - d_n)\,\theta,\qquad
          d_n = \min\!\big(d,\ \tfrac{1 + n}{10 + n}\big)

The warm-up term (as in TensorFlow's ExponentialMovingAverage with num_updates)
keeps the average from being dominated by the random initialisation during the
first updates. Buffers (e.g. BatchNorm statistics) are copied, not averaged.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """EMA(model, decay): call ``update()`` after each optimizer step.

    Args:
        model: the trained module (a DDP wrapper is unwrapped).
        decay: the asymptotic decay d in [0, 1).
        warmup: use min(d, (1 + n)/(10 + n)) for the n-th update.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        model = getattr(model, "module", model)
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone().float() if p.is_floating_point() else p.detach().clone()
            for name, p in model.state_dict().items()
        }
        self._param_names = {name for name, _ in model.named_parameters()}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        model = getattr(model, "module", model)
        d = self.current_decay()
        shadows, values = [], []
        for name, p in model.named_parameters(remove_duplicate=False):
            shadow = self.shadow.get(name)
            if shadow is None:
                continue
            if p.is_floating_point():
                shadows.append(shadow)
                values.append(p.detach().to(shadow.dtype))
            else:
                shadow.copy_(p.detach())
        if shadows:  # one vectorised pass: shadow += (1 - d)(p - shadow), i.e. d·shadow + (1 - d)·p
            torch._foreach_lerp_(shadows, values, 1 - d)
        for name, b in model.named_buffers(remove_duplicate=False):
            if name in self.shadow:
                self.shadow[name].copy_(b.detach())
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Loads the averaged weights into model."""
        model = getattr(model, "module", model)
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})

    @contextlib.contextmanager
    def average_parameters(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block the model holds the EMA weights; afterwards its own again."""
        inner = getattr(model, "module", model)
        saved = {k: v.detach().clone() for k, v in inner.state_dict().items()}
        self.copy_to(inner)
        try:
            yield model
        finally:
            inner.load_state_dict(saved)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state is missing entries for {sorted(missing)[:5]}")
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
