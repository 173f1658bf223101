r"""Learning-rate schedules as pure functions of the step: factor(step) multiplies the base lr.

    linear warm-up      f(t) = t / T_w                                     t < T_w
    cosine decay        f(t) = r + (1 − r)·½(1 + cos(π·p)),  p = (t − T_w)/(T − T_w) ∈ [0, 1]
    SGDR (warm restarts, Loshchilov & Hutter 2017, the "R" of AdamWR)
                        f(t) = r + (1 − r)·½(1 + cos(π·T_cur/T_i))
                        with T_i = T_0·T_mult^i the length of the current cycle, T_cur the steps into it
    constant            f(t) = 1 (after an optional warm-up)

r is the floor as a fraction of the base lr (``min_ratio``; torch's eta_min is
r·base_lr). ``warmup_cosine`` equals transformers' get_cosine_schedule_with_warmup
(and, with r > 0, get_cosine_with_min_lr_schedule_with_warmup) on [0, T] and
stays at r after T; ``cosine_restarts`` equals torch's CosineAnnealingWarmRestarts.

Being functions of the step alone, they resume exactly from a checkpointed
step. ``set_lr`` applies one to an optimizer at a step, ``lambda_lr`` wraps one
as a ``torch.optim.lr_scheduler.LambdaLR``.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch

__all__ = ["Schedule", "SCHEDULES", "constant", "linear_warmup", "warmup_cosine", "cosine_restarts",
           "get_schedule", "set_lr", "lambda_lr"]

Schedule = Callable[[int], float]


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_ratio(min_ratio: float) -> float:
    if not (isinstance(min_ratio, (int, float)) and 0.0 <= min_ratio <= 1.0):
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio!r}")
    return float(min_ratio)


def linear_warmup(step: int, warmup_steps: int) -> float:
    """t / T_w for t < T_w, then 1. Step 0 gives 0, as transformers' warm-up schedules do."""
    _check_int(step, "step", 0)
    _check_int(warmup_steps, "warmup_steps", 0)
    return step / warmup_steps if step < warmup_steps else 1.0


def constant(step: int, *, warmup_steps: int = 0) -> float:
    """1 after a linear warm-up of ``warmup_steps`` (none by default)."""
    return linear_warmup(step, warmup_steps)


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then half a cosine down to ``min_ratio`` at ``total_steps``."""
    _check_int(total_steps, "total_steps", 1)
    _check_int(warmup_steps, "warmup_steps", 0)
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps must be <= total_steps={total_steps}, got {warmup_steps}")
    r = _check_ratio(min_ratio)
    if step < warmup_steps:
        return linear_warmup(step, warmup_steps)
    _check_int(step, "step", 0)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_restarts(step: int, *, T_0: int, T_mult: int = 1, min_ratio: float = 0.0,
                    warmup_steps: int = 0) -> float:
    """SGDR: cosine cycles of T_0, T_0·T_mult, T_0·T_mult², ... steps, each restarting at 1.

    The optional linear warm-up comes first; the cycles start after it.
    """
    _check_int(T_0, "T_0", 1)
    _check_int(T_mult, "T_mult", 1)
    _check_int(warmup_steps, "warmup_steps", 0)
    r = _check_ratio(min_ratio)
    if step < warmup_steps:
        return linear_warmup(step, warmup_steps)
    _check_int(step, "step", 0)
    T_cur, T_i = step - warmup_steps, T_0
    if T_mult == 1:
        T_cur %= T_0
    else:
        while T_cur >= T_i:  # at most log_{T_mult}(step) iterations
            T_cur -= T_i
            T_i *= T_mult
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * T_cur / T_i))


SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": constant,
    "cosine": warmup_cosine,
    "sgdr": cosine_restarts,
}


def get_schedule(name: str, **kwargs: object) -> Schedule:
    """``SCHEDULES[name]`` with its keyword arguments bound: a function of the step alone.

    >>> f = get_schedule("cosine", warmup_steps=10, total_steps=100)
    >>> f(10), f(100)
    (1.0, 0.0)
    """
    if name not in SCHEDULES:
        raise ValueError(f"name must be one of {sorted(SCHEDULES)}, got {name!r}")
    schedule = functools.partial(SCHEDULES[name], **kwargs)
    schedule(0)  # bad keyword arguments fail here, at the boundary, not mid-training
    return schedule


def set_lr(optimizer: torch.optim.Optimizer, step: int, schedule: Schedule) -> list[float]:
    """Sets every param group's lr to ``initial_lr · schedule(step)`` and returns the new lrs.

    ``initial_lr`` is recorded from the group's lr on first use (LambdaLR's
    convention), so calling this at any step, e.g. right after a resume, gives
    the same lr as an uninterrupted run.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    factor = schedule(step)
    lrs = []
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * factor
        lrs.append(group["lr"])
    return lrs


def lambda_lr(optimizer: torch.optim.Optimizer, schedule: Schedule,
              last_epoch: int = -1) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR(optimizer, schedule)``: call ``.step()`` after each optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule, last_epoch=last_epoch)
