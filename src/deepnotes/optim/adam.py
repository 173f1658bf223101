r"""Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019), with torch.optim's semantics.

With step t, lr γ, betas (β1, β2), weight decay λ and gradient g (−g if maximize):

    Adam   (L2):        g ← g + λθ                  the decay goes through m and v
    AdamW  (decoupled): θ ← θ(1 − γλ)               the decay bypasses them
    m ← β1·m + (1 − β1)·g
    v ← β2·v + (1 − β2)·g²
    v_max ← max(v_max, v)                          amsgrad only; the raw v, not v̂
    θ ← θ − γ/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε)

ε is added to the bias-corrected √v̂ (torch's placement), neither inside the
square root nor Kingma's ε̂. AdamW is Adam with one switch flipped, the
``decoupled_weight_decay`` hook of the weight-decay step, as in torch.

torch's AdamW decays by γλ, the learning rate times λ, so the λ that works
best moves with γ by construction. Loshchilov & Hutter's Algorithm 2 multiplies
λ by the schedule multiplier η_t alone:

    AdamW(independent_weight_decay=True):   θ ← θ(1 − η_t·λ),   η_t = γ_t / γ_0

with γ_0 the group's ``initial_lr`` (set at construction, as torch's LR
schedulers and deepnotes.train.fit do). This is the "independent weight decay"
of Wortsman et al. (2023) and Composer's DecoupledAdamW. It equals torch's form
with λ_torch = λ/γ_0; the default (False) keeps torch's semantics exactly.

Three kernels share one signature (torch's optim/adam.py layout):

* ``_single_tensor_adam`` (here) is the readable reference: a loop over
  parameters, op for op torch's for-loop, so bit-exact with
  ``torch.optim.Adam(foreach=False)``, its differentiable branch included:
  with ``differentiable=True`` the step is recorded by autograd, so a loss
  after it has gradients w.r.t. the parameters, the state and any Tensor
  ``lr``, ``betas`` and ``weight_decay`` that require them;
* ``foreach_adam`` (_foreach_adam.py): each line one ``torch._foreach_*`` call
  over cache-sized blocks of parameters;
* ``fused_adam`` (_fused_adam.py): one pass per element, a C++/OpenMP kernel
  built on first use on the CPU, torch's fused kernel elsewhere.

``foreach=None`` picks the for-loop on CPU and foreach on CUDA, as torch does;
``fused`` is never picked by default. Constructor arguments, defaults, errors,
the per-parameter state (``step``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``) and the param-group keys are torch's, so state dicts load
into ``torch.optim.Adam/AdamW`` and back. ``lr`` may be a 1-element Tensor on
every path except foreach without capturable; ``betas`` both floats or both
Tensors, the same rule.
"""
from __future__ import annotations

import functools
import numbers
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._foreach_adam import check_capturable_devices, foreach_adam
from ._fused_adam import fused_adam

__all__ = ["Adam", "AdamW", "adam"]


def _scalar_dtype(is_fused: bool | None = None) -> torch.dtype:
    # `step` is float32 (fused: always), float64 when that is the default dtype, as torch keeps it.
    if is_fused:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _to_scalar(x: Any) -> Any:
    """A 1-element Tensor hyperparameter as a 0-dim Tensor (torch's _to_scalar); anything else as is."""
    return x.squeeze() if isinstance(x, Tensor) and x.dim() != 0 else x


def _check_hyperparameters(lr: Any, betas: Any, eps: Any, weight_decay: Any, foreach: Any,
                           capturable: bool) -> tuple[Any, Any]:
    """torch's checks, types and messages (its regexes match), each message also naming the argument."""
    if isinstance(lr, Tensor):
        if foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
    elif not isinstance(lr, numbers.Real):
        raise TypeError(f"lr must be a float or a 1-element Tensor, got {type(lr).__name__}")
    if not 0.0 <= lr:  # also rejects NaN
        raise ValueError(f"Invalid learning rate: {lr} (lr must be >= 0)")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps} (eps must be >= 0)")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i in (0, 1):
        if not 0.0 <= betas[i] < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]} (betas[{i}] must be in [0, 1))")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay} (weight_decay must be >= 0)")
    if not (all(isinstance(b, float) for b in betas) or all(isinstance(b, Tensor) for b in betas)):
        raise ValueError("betas must be either both floats or both Tensors")
    for i in (0, 1):
        if isinstance(betas[i], Tensor):
            if foreach and not capturable:
                raise ValueError(f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True")
            if betas[i].numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element")
    return _to_scalar(betas[0]), _to_scalar(betas[1])


def _use_grad_for_differentiable(step: Callable) -> Callable:
    """Runs ``step`` with autograd recording iff the optimizer is differentiable (torch's decorator)."""
    @functools.wraps(step)
    def wrapper(self: Optimizer, *args: Any, **kwargs: Any) -> Any:
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return step(self, *args, **kwargs)
    return wrapper


def _fused_devices() -> list[str]:
    # torch's list (torch.utils._foreach_utils), for torch's message; the CPU runs our kernel, the rest torch's.
    return ["mps", "cuda", "xpu", "hpu", "cpu", "mtia", torch._C._get_privateuse1_backend_name()]


class Adam(Optimizer):
    """Adam; ``decoupled_weight_decay=True`` makes it AdamW. Same arguments, defaults and errors as torch.optim.Adam."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float | Tensor = 1e-3,
                 betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False) -> None:
        beta1, beta2 = _check_hyperparameters(lr, betas, eps, weight_decay, foreach, capturable)
        defaults = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            self._step_supports_amp_scaling = True  # GradScaler hands over grad_scale and found_inf
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, default in (("amsgrad", False), ("maximize", False), ("foreach", None),
                                 ("capturable", False), ("differentiable", False),
                                 ("decoupled_weight_decay", False), ("fused", None)):
                group.setdefault(key, default)
            on_device = group["capturable"] or group["fused"]
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if len(p_state) != 0 and not torch.is_tensor(p_state["step"]):
                    step = float(p_state["step"])
                    p_state["step"] = (torch.tensor(step, dtype=_scalar_dtype(group["fused"]), device=p.device)
                                       if on_device else torch.tensor(step, dtype=_scalar_dtype()))

    def _init_group(self, group: dict, params: list, grads: list, exp_avgs: list, exp_avg_sqs: list,
                    max_exp_avg_sqs: list, state_steps: list) -> bool:
        """Collects the parameters that have a gradient, creating their state on first sight."""
        has_complex = False
        for p in group["params"]:
            if p.grad is None:
                continue
            has_complex |= torch.is_complex(p)
            if p.grad.is_sparse:
                raise RuntimeError("Adam does not support sparse gradients, please consider SparseAdam instead")
            state = self.state[p]
            if len(state) == 0:
                if group["fused"] and not (p.device.type in _fused_devices() and torch.is_floating_point(p)):
                    raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                                       f"supported devices: {_fused_devices()} but {p.dtype} and {p.device.type}")
                # Kept on the CPU unless capturable or fused: a host scalar costs no kernel launch.
                state["step"] = (torch.zeros((), dtype=_scalar_dtype(group["fused"]), device=p.device)
                                 if group["capturable"] or group["fused"]
                                 else torch.tensor(0.0, dtype=_scalar_dtype()))
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["differentiable"] and state["step"].requires_grad:
                raise RuntimeError("`requires_grad` is not supported for `step` in differentiable mode")
            if group["foreach"] and torch.is_tensor(group["lr"]) and not group["capturable"]:
                raise RuntimeError("lr as a Tensor is not supported for capturable=False and foreach=True")
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            state_steps.append(state["step"])
        return has_complex

    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient; parameters without one are left alone."""
        health_check = getattr(self, "_accelerator_graph_capture_health_check",
                               getattr(self, "_cuda_graph_capture_health_check", None))
        if health_check is not None:
            health_check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps = [], [], [], [], [], []
            has_complex = self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                           state_steps)
            beta1, beta2 = group["betas"]
            adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
                 foreach=group["foreach"], capturable=group["capturable"], differentiable=group["differentiable"],
                 fused=group["fused"], grad_scale=getattr(self, "grad_scale", None),
                 found_inf=getattr(self, "found_inf", None), has_complex=has_complex,
                 decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=group["amsgrad"],
                 beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=_kernel_weight_decay(group),
                 eps=group["eps"], maximize=group["maximize"])
        return loss


def _kernel_weight_decay(group: dict) -> float | Tensor:
    """The λ the kernels multiply by the group's lr: λ itself, or λ/γ_0 for independent decay
    (the kernel's γ_t·λ/γ_0 = η_t·λ)."""
    if not group.get("independent_weight_decay", False):
        return group["weight_decay"]
    initial_lr = float(group["initial_lr"])
    return group["weight_decay"] / initial_lr if initial_lr != 0 else 0.0


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay θ ← θ(1 − γλ).

    Same arguments and defaults as torch.optim.AdamW, plus
    ``independent_weight_decay``: False (default) decays by γ_t·λ as torch does;
    True decays by η_t·λ, the schedule multiplier η_t = γ_t/γ_0 times λ, as in
    Loshchilov & Hutter's algorithm (λ then no longer moves with the learning rate)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float | Tensor = 1e-3,
                 betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, independent_weight_decay: bool = False) -> None:
        if not isinstance(independent_weight_decay, bool):
            raise TypeError(f"independent_weight_decay must be a bool, got {independent_weight_decay!r}")
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)
        if independent_weight_decay:
            self.defaults["independent_weight_decay"] = True
            for group in self.param_groups:
                group.setdefault("independent_weight_decay", True)
                group.setdefault("initial_lr", group["lr"])  # γ_0: what η_t = γ_t/γ_0 is measured against

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("independent_weight_decay"):
            group.setdefault("initial_lr", group["lr"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Whatever the loaded state says, AdamW decouples (torch does the same).
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


# --- the functional form and the reference kernel ----------------------------------------------

def adam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
         max_exp_avg_sqs: list[Tensor], state_steps: list[Tensor], foreach: bool | None = None,
         capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
         grad_scale: Tensor | None = None, found_inf: Tensor | None = None, has_complex: bool = False,
         decoupled_weight_decay: bool = False, *, amsgrad: bool, beta1: float | Tensor, beta2: float | Tensor,
         lr: float | Tensor, weight_decay: float | Tensor, eps: float, maximize: bool) -> None:
    """Functional Adam/AdamW over lists of tensors, updated in place (torch.optim.adam's signature)."""
    if has_complex:  # complex numbers are updated as pairs of reals (the views share storage)
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs = (
            [torch.view_as_real(t) if torch.is_complex(t) else t for t in lst]
            for lst in (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs))
    if fused is None and foreach is None:
        # torch's default: foreach only when every tensor is on an accelerator, never for a
        # differentiable step, nor for a Tensor lr without capturable.
        foreach = (not differentiable and all(p.device.type in ("cuda", "xpu") for p in params)
                   and not (isinstance(lr, Tensor) and not capturable))
    if not all(isinstance(t, Tensor) for t in state_steps):
        raise RuntimeError("API has changed, `state_steps` argument must contain a list of singleton tensors")
    kernel = fused_adam if fused else foreach_adam if foreach else _single_tensor_adam
    kernel(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, grad_scale, found_inf,
           amsgrad=amsgrad, has_complex=has_complex, beta1=beta1, beta2=beta2, lr=lr,
           weight_decay=weight_decay, eps=eps, maximize=maximize, capturable=capturable,
           differentiable=differentiable, decoupled_weight_decay=decoupled_weight_decay)


def _single_tensor_adam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                        exp_avg_sqs: list[Tensor], max_exp_avg_sqs: list[Tensor], state_steps: list[Tensor],
                        grad_scale: Tensor | None, found_inf: Tensor | None, *, amsgrad: bool,
                        has_complex: bool, beta1: float | Tensor, beta2: float | Tensor, lr: float | Tensor,
                        weight_decay: float | Tensor, eps: float, maximize: bool, capturable: bool,
                        differentiable: bool, decoupled_weight_decay: bool) -> None:
    """The reference: the update rule of the module docstring, one parameter at a time."""
    if grad_scale is not None or found_inf is not None:
        raise AssertionError("Expected grad_scale and found_inf to be None")
    lr, beta1, beta2 = _to_scalar(lr), _to_scalar(beta1), _to_scalar(beta2)
    beta1_on: dict[tuple[torch.device, torch.dtype], Tensor] = {}  # a Tensor β1 moved next to each parameter
    if capturable:
        check_capturable_devices(params, state_steps)
    # With autograd recording (differentiable), in-place ops must not overwrite what the graph saved:
    # hence the clones below, each one where torch's for-loop has it.
    for i, theta in enumerate(params):
        g = -grads[i] if maximize else grads[i]
        m, v = exp_avgs[i], exp_avg_sqs[i]
        step_t = state_steps[i]
        step_t += 1

        if weight_decay != 0:
            if decoupled_weight_decay:
                theta.mul_(1 - lr * weight_decay)                       # AdamW: θ ← θ(1 − γλ)
            elif differentiable and isinstance(weight_decay, Tensor) and weight_decay.requires_grad:
                g = g.addcmul_(theta.clone(), weight_decay)             # Adam: g ← g + λθ, λ in the graph
            else:
                g = g.add(theta, alpha=weight_decay)                    # Adam: g ← g + λθ

        b1 = beta1
        if isinstance(beta1, Tensor):
            b1 = beta1_on.setdefault((theta.device, theta.dtype), beta1.to(theta.device, theta.dtype))
        m.lerp_(g, 1 - b1)                                              # m ← β1·m + (1 − β1)·g
        if differentiable and isinstance(beta2, Tensor) and beta2.requires_grad:
            v.lerp_(torch.square(g), weight=1 - beta2)                  # the same, with β2 in the graph
        else:
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)               # v ← β2·v + (1 − β2)·g²

        if capturable or differentiable:
            # Bias corrections as tensors: no host sync (capturable) and a graph through β (differentiable).
            t = step_t
            bc1 = 1 - beta1 ** (t.clone() if differentiable and isinstance(beta1, Tensor) and beta1.requires_grad
                                else t)
            bc2 = 1 - beta2 ** (t.clone() if differentiable and isinstance(beta2, Tensor) and beta2.requires_grad
                                else t)
            step_size_neg = (lr / bc1).neg()
            bc2_sqrt = bc2.sqrt()
            if amsgrad:
                v_max = max_exp_avg_sqs[i].clone() if differentiable else max_exp_avg_sqs[i]
                max_exp_avg_sqs[i].copy_(torch.maximum(v_max, v))
                v = max_exp_avg_sqs[i]
            # θ + m / ((√v/c + ε)/(−s)) = θ − s·m/(√v̂ + ε), the 1-element scalars folded into the divisor
            denom = (v.sqrt() / (bc2_sqrt * step_size_neg)).add_(eps / step_size_neg)
            theta.addcdiv_(m.clone() if differentiable else m, denom)
        else:
            t = step_t.item()
            bias_correction1 = 1 - beta1**t
            bias_correction2_sqrt = (1 - beta2**t) ** 0.5
            step_size = lr / bias_correction1
            if amsgrad:
                torch.maximum(max_exp_avg_sqs[i], v, out=max_exp_avg_sqs[i])   # v_max ← max(v_max, v)
                v = max_exp_avg_sqs[i]
            denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)              # √v̂ + ε
            theta.addcdiv_(m, denom, value=-step_size)                        # θ ← θ − s·m/(√v̂ + ε)
