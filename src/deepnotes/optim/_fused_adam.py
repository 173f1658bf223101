r"""Adam's fused path: one pass per element, all of the update of deepnotes.optim.adam at once.

On the CPU the pass is ``csrc/fused_adam.cpp``, a C++/OpenMP kernel compiled
with ``torch.utils.cpp_extension`` on first use and cached in
``$XDG_CACHE_HOME/deepnotes/ext`` (``~/.cache`` by default) under a hash of
its source, its flags, the torch version and the CPU; a build costs 10–25 s
once per machine (measured on 2 busy cores), a cached load a few milliseconds
(``build_info()`` says which). It follows the operation order of torch's fused CPU kernel, so
the two agree to rounding, and it takes GradScaler's ``grad_scale`` and
``found_inf`` as torch's does: gradients divided by ``grad_scale`` in place,
and no step at all (step counters included) when ``found_inf`` is 1. It
differs in scheduling: the chunks of all tensors share one parallel region
where torch opens one per tensor. A parameter that is not dense (a strided
view) or whose companions have other strides goes through contiguous copies,
on every backend: torch 2.13's fused CPU kernel silently mis-updates one.

Off the CPU the update is torch's own fused kernel (``torch._fused_adam_``,
``torch._fused_adamw_``). When the C++ kernel cannot be built (no compiler, no
ninja) a RuntimeWarning says so once and the CPU takes torch's fused kernel
as well, or, on a torch without one, ``fused_adam_reference``: the same update
in plain torch ops, one tensor at a time, the readable statement of what the
kernel computes (and what the tests hold it to).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import _ext

__all__ = ["fused_adam", "fused_adam_reference", "build_info", "load_kernel"]

SOURCE = Path(__file__).parent / "csrc" / "fused_adam.cpp"
# -ffp-contract=off: the kernel spells out torch's fused multiply-adds and nothing else gets fused.
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"]
LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_state: dict[str, Any] = {"kernel": None, "tried": False, "error": None, "build_seconds": None, "cached": None,
                          "build_dir": None}


_cpu_signature = _ext.cpu_signature  # a module name, so that tests can stand in another CPU


def load_kernel() -> Any | None:
    """The compiled ``torch.ops.deepnotes_optim.fused_adam_``, built on the first call; None if it cannot be built."""
    def fallback(error: str) -> str:
        instead = "torch's fused kernel" if _torch_has_fused_cpu() else "the pure-torch reference"
        return (f"deepnotes.optim: the fused Adam C++ kernel could not be built ({error}); fused=True runs "
                f"{instead} on the CPU instead")

    return _ext.load_once(_state, _lock, lambda: _build(), fallback)


def _build_key(source: bytes) -> str:
    return _ext.build_key(source, CFLAGS + LDFLAGS, _cpu_signature())


def _build() -> Any:
    _state.update(_ext.build("deepnotes_fused_adam", SOURCE, _build_key(SOURCE.read_bytes()), CFLAGS, LDFLAGS))
    return torch.ops.deepnotes_optim.fused_adam_


def build_info() -> dict[str, Any]:
    """Which CPU backend fused=True uses and what it cost: backend, build_seconds, cached, build_dir, error."""
    op = load_kernel()
    backend = "cpp" if op is not None else ("torch" if _torch_has_fused_cpu() else "reference")
    return {"backend": backend, **{k: _state[k] for k in ("build_seconds", "cached", "build_dir", "error")}}


def _torch_has_fused_cpu() -> bool:
    # torch's fused Adam runs on the CPU from 2.4 on.
    return hasattr(torch, "_fused_adam_") and tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)


def fused_adam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
               max_exp_avg_sqs: list[Tensor], state_steps: list[Tensor], grad_scale: Tensor | None,
               found_inf: Tensor | None, *, amsgrad: bool, has_complex: bool, beta1: float | Tensor,
               beta2: float | Tensor, lr: float | Tensor, weight_decay: float | Tensor, eps: float,
               maximize: bool, capturable: bool, differentiable: bool, decoupled_weight_decay: bool) -> None:
    """Adam/AdamW in one pass per element; the signature of every Adam kernel (capturable is moot here, as in torch)."""
    if not params:
        return
    if differentiable:
        raise RuntimeError("Adam with fused=True does not support differentiable=True")
    hyper = dict(beta1=float(beta1), beta2=float(beta2), weight_decay=float(weight_decay), eps=eps,
                 amsgrad=amsgrad, maximize=maximize)
    by_device: dict[torch.device, list[int]] = {}
    for i, p in enumerate(params):
        by_device.setdefault(p.device, []).append(i)
    for device, idx in by_device.items():
        lists = [[lst[i] for i in idx] for lst in (params, grads, exp_avgs, exp_avg_sqs)]
        lists.append([max_exp_avg_sqs[i] for i in idx] if amsgrad else [])
        steps = [state_steps[i] for i in idx]
        scale = grad_scale.to(device, non_blocking=True) if grad_scale is not None else None
        inf = found_inf.to(device, non_blocking=True) if found_inf is not None else None
        op = load_kernel() if device.type == "cpu" else None
        if op is not None:
            with _dense(lists, write_back_grads=scale is not None) as dense:
                op(*dense, steps, lr=float(lr), decoupled_weight_decay=decoupled_weight_decay,
                   grad_scale=scale, found_inf=inf, **hyper)
        elif device.type != "cpu" or _torch_has_fused_cpu():
            # torch's kernels run over flat memory too (torch 2.13 silently mis-updates a strided parameter)
            with _dense(lists, write_back_grads=scale is not None) as dense:
                _torch_fused(dense, steps, scale, inf, lr=lr, decoupled_weight_decay=decoupled_weight_decay,
                             **hyper)
        else:
            for i in range(len(steps)):
                fused_adam_reference(*(lst[i] if lst else None for lst in lists), steps[i], scale, inf, lr=float(lr),
                                     decoupled_weight_decay=decoupled_weight_decay, **hyper)


def _torch_fused(lists: list[list[Tensor]], steps: list[Tensor], grad_scale: Tensor | None,
                 found_inf: Tensor | None, *, lr: float | Tensor, decoupled_weight_decay: bool,
                 **hyper: Any) -> None:
    """torch's ``_fused_adam`` for one device: torch's kernels take one dtype per call."""
    device = lists[0][0].device
    if isinstance(lr, Tensor) and lr.device != device and lr.device.type != "cpu":
        lr = lr.to(device)
    func = torch._fused_adamw_ if decoupled_weight_decay else torch._fused_adam_
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, p in enumerate(lists[0]):
        by_dtype.setdefault(p.dtype, []).append(i)
    for idx in by_dtype.values():
        sub = [[lst[i] for i in idx] if lst else [] for lst in lists]
        sub_steps = [steps[i] for i in idx]
        torch._foreach_add_(sub_steps, 1)
        func(*sub, sub_steps, lr=lr, grad_scale=grad_scale, found_inf=found_inf, **hyper)
        if found_inf is not None:
            torch._foreach_sub_(sub_steps, [found_inf] * len(sub_steps))


class _dense:
    """Context manager: the tensor lists with every non-dense or mismatched-stride entry swapped for a
    contiguous copy, copied back on exit (the kernel runs over flat memory)."""

    def __init__(self, lists: list[list[Tensor]], write_back_grads: bool) -> None:
        self.lists, self.write_back = lists, write_back_grads
        self.swapped: list[int] = []

    def __enter__(self) -> list[list[Tensor]]:
        out = [list(lst) for lst in self.lists]
        for i, p in enumerate(self.lists[0]):
            if not (_is_dense(p) and all(lst[i].stride() == p.stride() for lst in self.lists[1:] if lst)):
                self.swapped.append(i)
                for lst in out:
                    if lst:
                        lst[i] = lst[i].contiguous()
        self.out = out
        return out

    def __exit__(self, *exc: Any) -> None:
        for i in self.swapped:
            for k, (orig, new) in enumerate(zip(self.lists, self.out)):
                if orig and (k != 1 or self.write_back):  # grads (list 1) change only when unscaled
                    orig[i].copy_(new[i])


def _is_dense(t: Tensor) -> bool:
    """Whether the elements of ``t`` fill ``numel`` consecutive memory slots (any dimension order)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: d[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def fused_adam_reference(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
                         max_exp_avg_sq: Tensor | None, step: Tensor, grad_scale: Tensor | None,
                         found_inf: Tensor | None, *, lr: float, beta1: float, beta2: float, weight_decay: float,
                         eps: float, amsgrad: bool, maximize: bool, decoupled_weight_decay: bool) -> None:
    """The fused kernel's update of one tensor in plain torch ops, in its order and its math precision
    (float for half and bfloat16): what csrc/fused_adam.cpp computes, up to its fused multiply-adds."""
    if found_inf is not None and float(found_inf) == 1.0:
        return
    step += 1
    t = float(step)
    bias_correction1 = 1 - beta1**t
    bias_correction2_sqrt = (1 - beta2**t) ** 0.5
    opmath = torch.float32 if param.dtype in (torch.float16, torch.bfloat16) else param.dtype

    g = grad.to(opmath, copy=True)
    if grad_scale is not None:
        g = g / float(grad_scale)
        grad.copy_(g)                                  # unscaled in place, as torch's kernel does
    if maximize:
        g = -g
    theta = param.to(opmath, copy=True)
    if weight_decay != 0:
        if decoupled_weight_decay:
            theta = theta * (1 - lr * weight_decay)    # θ ← θ(1 − γλ)
        else:
            g = g + theta * weight_decay               # g ← g + λθ
    m = exp_avg.to(opmath, copy=True).lerp_(g, 1 - beta1)                 # m ← β1·m + (1 − β1)·g
    v = exp_avg_sq.to(opmath, copy=True) * beta2 + (1 - beta2) * g * g   # v ← β2·v + (1 − β2)·g²
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    if amsgrad:
        v = torch.maximum(max_exp_avg_sq.to(opmath), v)
        max_exp_avg_sq.copy_(v)
    denom = v.sqrt() / bias_correction2_sqrt + eps                        # √v̂ + ε
    param.copy_(theta - (lr / bias_correction1) * m / denom)
