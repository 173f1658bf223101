r"""Dynamic loss scaling (Micikevicius et al. 2018), with torch.amp.GradScaler's semantics.

FP16 has 5 exponent bits: gradients below 2^-24 flush to zero. Scaling the loss
by S shifts every gradient up by the same factor, so the small ones survive the
backward pass; the optimizer then sees g/S. S is chosen dynamically:

* a step whose (scaled) gradients contain inf/NaN is skipped and S <- S·backoff;
* after ``growth_interval`` consecutive finite steps, S <- S·growth (if finite).

One iteration::

    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)          # optional: before clipping
    clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)              # skips optimizer.step() on inf/NaN
    scaler.update()
    if scaler.last_step_skipped: ...

Numbers follow torch exactly: S is a float32 scalar, the unscale factor is the
float32 rounding of the float64 reciprocal 1/S, the update is computed in
float64 and rounded once to float32 (torch's ``_amp_update_scale_`` kernel),
and ``state_dict()`` has torch's five keys so it loads both ways.

The scaler works with any ``torch.optim.Optimizer``: it unscales the
gradients itself and calls ``optimizer.step()`` only when they are finite, so
optimizers with their own scale handling (``fused=True``) are driven the same
way and receive already-unscaled gradients.
"""
from __future__ import annotations

import math
from enum import Enum
from typing import Any, Iterable

import torch
from torch import Tensor

__all__ = ["DynamicLossScaler", "OptState"]


class OptState(Enum):
    """Where one optimizer is in the current iteration."""

    READY = 0
    UNSCALED = 1
    STEPPED = 2


def _fresh_state() -> dict[str, Any]:
    return {"stage": OptState.READY, "found_inf": None}


class DynamicLossScaler:
    """Dynamic loss scaler; drop-in for ``torch.amp.GradScaler``.

    Args:
        init_scale: S before the first update (default 2^16).
        growth_factor: S <- S·growth_factor after ``growth_interval`` finite steps (> 1).
        backoff_factor: S <- S·backoff_factor after a step with inf/NaN (in (0, 1)).
        growth_interval: finite steps in a row before S grows (positive int).
        enabled: if False every method is a pass-through: ``scale`` returns its
            input, ``step`` calls ``optimizer.step()``, ``get_scale`` is 1.0.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000,
                 enabled: bool = True) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
        if not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be a positive finite number, got {init_scale!r}")
        if not (isinstance(growth_factor, (int, float)) and math.isfinite(growth_factor) and growth_factor > 1.0):
            raise ValueError(f"growth_factor must be a finite number > 1.0, got {growth_factor!r}")
        if not (isinstance(backoff_factor, (int, float)) and 0.0 < backoff_factor < 1.0):
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor!r}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"growth_interval must be a positive int, got {growth_interval!r}")
        self._enabled = enabled
        self._init_scale = float(init_scale)
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = growth_interval
        self._init_growth_tracker = 0
        # S and the count of finite steps live on the loss's device, created by
        # the first scale() call (as torch does).
        self._scale: Tensor | None = None
        self._growth_tracker: Tensor | None = None
        self._per_optimizer: dict[int, dict[str, Any]] = {}
        self._last_step_skipped = False
        self.skipped_steps = 0  # optimizer steps skipped since construction (for logging)

    # --- the iteration ---------------------------------------------------------------

    def scale(self, outputs: Tensor | Iterable[Tensor]) -> Tensor | Iterable[Tensor]:
        """Returns ``outputs · S`` (a tensor, or a list/tuple of them, nested)."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, Tensor):
            if self._scale is None:
                self._lazy_init(outputs.device)
            return outputs * self._scale.to(outputs.device)
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        if isinstance(outputs, Iterable):
            return map(self.scale, outputs)
        raise TypeError(f"outputs must be a Tensor or an iterable of Tensors, got {type(outputs).__name__}")

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divides the optimizer's gradients by S in place and records whether any is inf/NaN.

        Call it at most once per optimizer between ``update()`` calls, and
        before gradient clipping so that the clip threshold is in true units.
        """
        if not self._enabled:
            return
        self._require_scale("unscale_")
        state = self._state(optimizer)
        if state["stage"] is OptState.UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        # 1/S in float64, rounded once to float32: torch's factor, bit for bit.
        inv_scale = self._scale.double().reciprocal().float()
        state["found_inf"] = _unscale_grads_(optimizer, inv_scale, allow_fp16=False)
        state["stage"] = OptState.UNSCALED

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        """Unscales (unless ``unscale_`` was called) and runs ``optimizer.step()`` if all grads are finite.

        Returns what ``optimizer.step`` returns, or None when the step was skipped.
        """
        if not self._enabled:
            self._last_step_skipped = False
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if DynamicLossScaler is enabled.")
        self._require_scale("step")
        state = self._state(optimizer)
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if state["stage"] is OptState.READY:
            self.unscale_(optimizer)
        found_inf = bool(state["found_inf"].item())
        retval = None
        if not found_inf:
            retval = optimizer.step(*args, **kwargs)
        else:
            self.skipped_steps += 1
        self._last_step_skipped = found_inf
        state["stage"] = OptState.STEPPED
        return retval

    def update(self, new_scale: float | Tensor | None = None) -> None:
        """Backs off on inf/NaN, grows after ``growth_interval`` finite steps; or sets ``new_scale``.

        Call it once per iteration, after ``step`` for every optimizer.
        """
        if not self._enabled:
            return
        self._require_scale("update")
        if new_scale is not None:
            if isinstance(new_scale, Tensor):
                if new_scale.numel() != 1 or new_scale.requires_grad:
                    raise ValueError("new_scale must be a float or a 1-element tensor without grad, "
                                     f"got shape {tuple(new_scale.shape)}, requires_grad={new_scale.requires_grad}")
                self._scale.copy_(new_scale.reshape(()))
            else:
                self._scale.fill_(float(new_scale))
        else:
            found = [s["found_inf"] for s in self._per_optimizer.values() if s["found_inf"] is not None]
            if not found:
                raise RuntimeError("No inf checks were recorded prior to update(): call step() or unscale_() first.")
            found_inf = any(bool(f.item()) for f in found)
            self._update_scale(found_inf)
        self._per_optimizer = {}

    def _update_scale(self, found_inf: bool) -> None:
        # torch's _amp_update_scale_: float32 S times a float64 factor, rounded once.
        scale, tracker = float(self._scale.item()), int(self._growth_tracker.item())
        if found_inf:
            self._scale.fill_(scale * self._backoff_factor)
            self._growth_tracker.fill_(0)
            return
        successful = tracker + 1
        if successful == self._growth_interval:
            grown = torch.tensor(scale * self._growth_factor, dtype=torch.float32)
            if torch.isfinite(grown):
                self._scale.copy_(grown)
            self._growth_tracker.fill_(0)
        else:
            self._growth_tracker.fill_(successful)

    # --- queries -----------------------------------------------------------------------

    def get_scale(self) -> float:
        """Current S as a Python float (1.0 when disabled)."""
        if not self._enabled:
            return 1.0
        return self._init_scale if self._scale is None else float(self._scale.item())

    @property
    def last_step_skipped(self) -> bool:
        """True if the most recent ``step()`` skipped ``optimizer.step()`` (inf/NaN gradients).

        Stays valid after ``update()``, so a training loop can log it at the end of the iteration.
        """
        return self._last_step_skipped

    @property
    def found_inf(self) -> bool:
        """Alias of ``last_step_skipped``."""
        return self._last_step_skipped

    def is_enabled(self) -> bool:
        return self._enabled

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def _get_growth_tracker(self) -> int:
        if not self._enabled:
            return 0
        return self._init_growth_tracker if self._growth_tracker is None else int(self._growth_tracker.item())

    # --- checkpoints -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch.amp.GradScaler's layout: scale, growth_factor, backoff_factor, growth_interval,
        _growth_tracker (empty when disabled). Take it after ``update()``."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._get_growth_tracker()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a dict from ``state_dict()`` here or from ``torch.amp.GradScaler.state_dict()``."""
        if not self._enabled:
            return
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved "
                               "from a disabled scaler.")
        keys = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
        missing = [k for k in keys if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict is missing keys {missing}; expected {list(keys)}, got {sorted(state_dict)}")
        self._init_scale = float(state_dict["scale"])
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._init_growth_tracker = int(state_dict["_growth_tracker"])
        if self._scale is not None:
            self._scale.fill_(self._init_scale)
            self._growth_tracker.fill_(self._init_growth_tracker)

    # --- internals ---------------------------------------------------------------------

    def _lazy_init(self, device: torch.device) -> None:
        self._scale = torch.full((), self._init_scale, dtype=torch.float32, device=device)
        self._growth_tracker = torch.full((), self._init_growth_tracker, dtype=torch.int32, device=device)

    def _require_scale(self, name: str) -> None:
        if self._scale is None:
            raise RuntimeError(f"{name}() was called before scale(): scale the loss first "
                               "(scaler.scale(loss).backward()) in each iteration.")

    def _state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        return self._per_optimizer.setdefault(id(optimizer), _fresh_state())


def _unscale_grads_(optimizer: torch.optim.Optimizer, inv_scale: Tensor, allow_fp16: bool) -> Tensor:
    """g <- g · inv_scale for every gradient; returns a float32 flag, 1.0 if any was inf/NaN.

    Every gradient is multiplied even when an inf was found: the step is
    skipped anyway, and this keeps the result identical to torch's kernel.
    """
    found_inf = torch.zeros((), dtype=torch.float32, device=inv_scale.device)
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not allow_fp16 and p.grad.dtype == torch.float16:
                    raise ValueError("Attempting to unscale FP16 gradients.")
                g = p.grad
                if g.is_sparse:
                    if g.dtype == torch.float16:
                        p.grad = g = g.coalesce()
                    g = g._values()
                if not torch.isfinite(g).all():
                    found_inf.fill_(1.0)
                g.mul_(inv_scale.to(g.device))
    return found_inf
