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

Two kernels share one signature: ``_single_tensor_adam`` is the readable
reference (a loop over parameters, op for op torch's for-loop, so it is
bit-exact with ``torch.optim.Adam(foreach=False)``); ``_foreach_adam`` runs the
same math as one ``torch._foreach_*`` call per line over cache-sized blocks of
parameters (equal to the reference to rounding). ``foreach=None`` picks the
for-loop on CPU and foreach on CUDA, as torch does. Constructor arguments,
defaults, the per-parameter state (``step``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``) and the param-group keys are torch's, so state dicts load
into ``torch.optim.Adam/AdamW`` and back.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["Adam", "AdamW", "adam"]


def _scalar_dtype() -> torch.dtype:
    # torch keeps `step` as a float32 CPU scalar, float64 when that is the default dtype.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _check_hyperparameters(lr: Any, betas: Any, eps: Any, weight_decay: Any, foreach: Any,
                           capturable: Any, differentiable: Any, fused: Any) -> tuple[float, float]:
    """One ValueError per bad hyperparameter, naming it, the expected and the received value."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"lr as a Tensor must have 1 element, got shape {tuple(lr.shape)}")
        if foreach:
            raise ValueError("lr as a Tensor is not supported with foreach=True; pass a float")
    elif not isinstance(lr, (int, float)) or isinstance(lr, bool):
        raise TypeError(f"lr must be a float or a 1-element Tensor, got {type(lr).__name__}")
    if not float(lr) >= 0.0:  # also rejects NaN
        raise ValueError(f"Invalid learning rate: lr must be >= 0, got {float(lr)}")
    if not (isinstance(eps, (int, float)) and eps >= 0.0):
        raise ValueError(f"Invalid epsilon value: eps must be >= 0, got {eps!r}")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    b = [float(x) if isinstance(x, (int, float, Tensor)) else math.nan for x in betas]
    for i in (0, 1):
        if not 0.0 <= b[i] < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: betas[{i}] must be in [0, 1), got {betas[i]!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0.0):
        raise ValueError(f"Invalid weight_decay value: weight_decay must be >= 0, got {weight_decay!r}")
    if foreach not in (None, True, False):
        raise ValueError(f"foreach must be None, True or False, got {foreach!r}")
    if capturable:
        raise ValueError("capturable=True is not implemented by deepnotes.optim (CUDA graphs); "
                         "expected False, got True")
    if differentiable:
        raise ValueError("differentiable=True is not implemented by deepnotes.optim; expected False, got True")
    if fused:
        raise ValueError("fused=True is not implemented by deepnotes.optim (use torch.optim.AdamW(fused=True)); "
                         "expected None or False, got True")
    return b[0], b[1]


class Adam(Optimizer):
    """Adam; ``decoupled_weight_decay=True`` makes it AdamW. Same arguments and defaults as torch.optim.Adam.

    ``capturable``, ``differentiable`` and ``fused`` exist so that the
    signature and the state-dict layout are torch's; only their defaults
    (False, False, None) are implemented.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float | Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 amsgrad: bool = False, *, foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False) -> None:
        beta1, beta2 = _check_hyperparameters(lr, betas, eps, weight_decay, foreach, capturable,
                                              differentiable, fused)
        defaults = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, default in (("amsgrad", False), ("maximize", False), ("foreach", None),
                                 ("capturable", False), ("differentiable", False), ("fused", None),
                                 ("decoupled_weight_decay", False)):
                group.setdefault(key, default)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if len(p_state) != 0 and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=_scalar_dtype())

    def _init_group(self, group: dict, params: list, grads: list, exp_avgs: list, exp_avg_sqs: list,
                    max_exp_avg_sqs: list, state_steps: list) -> None:
        """Collects the parameters that have a gradient, creating their state on first sight."""
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("Adam does not support sparse gradients, please consider SparseAdam instead")
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            # Complex numbers are updated as pairs of reals (views share the storage).
            real = torch.view_as_real if torch.is_complex(p) else (lambda t: t)
            params.append(real(p))
            grads.append(real(p.grad))
            exp_avgs.append(real(state["exp_avg"]))
            exp_avg_sqs.append(real(state["exp_avg_sq"]))
            if group["amsgrad"]:
                max_exp_avg_sqs.append(real(state["max_exp_avg_sq"]))
            state_steps.append(state["step"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient; parameters without one are left alone."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps = [], [], [], [], [], []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
            beta1, beta2 = group["betas"]
            foreach = group["foreach"]
            if foreach is None:  # torch's default: foreach on accelerators, the for-loop on CPU
                foreach = bool(params) and all(p.device.type == "cuda" for p in params)
            adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
                 foreach=foreach, amsgrad=group["amsgrad"], beta1=beta1, beta2=beta2,
                 lr=group["lr"], weight_decay=_kernel_weight_decay(group), eps=group["eps"],
                 maximize=group["maximize"], decoupled_weight_decay=group["decoupled_weight_decay"])
        return loss


def _kernel_weight_decay(group: dict) -> float:
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
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, *, maximize: bool = False, foreach: bool | None = None,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
                 independent_weight_decay: bool = False) -> None:
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


# --- the kernels: one signature, two implementations --------------------------------------

def adam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
         max_exp_avg_sqs: list[Tensor], state_steps: list[Tensor], *, foreach: bool = False,
         amsgrad: bool, beta1: float, beta2: float, lr: float | Tensor, weight_decay: float, eps: float,
         maximize: bool, decoupled_weight_decay: bool) -> None:
    """Functional Adam/AdamW over lists of tensors, updated in place (torch.optim.adam's layout)."""
    kernel = _foreach_adam if foreach else _single_tensor_adam
    kernel(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad=amsgrad,
           beta1=beta1, beta2=beta2, lr=lr, weight_decay=weight_decay, eps=eps, maximize=maximize,
           decoupled_weight_decay=decoupled_weight_decay)


def _single_tensor_adam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                        exp_avg_sqs: list[Tensor], max_exp_avg_sqs: list[Tensor], state_steps: list[Tensor], *,
                        amsgrad: bool, beta1: float, beta2: float, lr: float | Tensor, weight_decay: float,
                        eps: float, maximize: bool, decoupled_weight_decay: bool) -> None:
    """The reference: the update rule of the module docstring, one parameter at a time."""
    for i, theta in enumerate(params):
        g = -grads[i] if maximize else grads[i]
        m, v = exp_avgs[i], exp_avg_sqs[i]
        state_steps[i] += 1
        t = state_steps[i].item()

        if weight_decay != 0:
            if decoupled_weight_decay:
                theta.mul_(1 - lr * weight_decay)       # AdamW: θ ← θ(1 − γλ)
            else:
                g = g.add(theta, alpha=weight_decay)    # Adam: g ← g + λθ

        m.lerp_(g, 1 - beta1)                           # m ← β1·m + (1 − β1)·g
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)   # v ← β2·v + (1 − β2)·g²

        bias_correction1 = 1 - beta1**t
        bias_correction2_sqrt = (1 - beta2**t) ** 0.5
        step_size = lr / bias_correction1
        if amsgrad:
            torch.maximum(max_exp_avg_sqs[i], v, out=max_exp_avg_sqs[i])
            v = max_exp_avg_sqs[i]
        denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)   # √v̂ + ε
        theta.addcdiv_(m, denom, value=-step_size)


def _foreach_adam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                  exp_avg_sqs: list[Tensor], max_exp_avg_sqs: list[Tensor], state_steps: list[Tensor], *,
                  amsgrad: bool, beta1: float, beta2: float, lr: float | Tensor, weight_decay: float,
                  eps: float, maximize: bool, decoupled_weight_decay: bool) -> None:
    """The same update, each line one torch._foreach_* call over a block of parameters.

    Two choices make it faster than torch's foreach on CPU, where every
    foreach op is a full pass over memory:

    * blocks of about ``_CPU_BLOCK_NUMEL`` elements (large tensors split into
      views; the update is elementwise) so that the 6 arrays a block touches
      stay in the last-level cache across the 7 passes;
    * the bias correction folded into the scalars, one pass fewer:
      θ − s·m/(√v/c + ε) = θ − (s·c)·m/(√v + ε·c), with c = √(1 − β2^t).
      Same math; the rounding differs from the reference in the last bit.
    """
    if not params:
        return
    if isinstance(lr, Tensor):
        raise ValueError("lr as a Tensor is not supported with foreach=True; pass a float")
    # Step counters are CPU scalars: one shared tensor 1 (torch's trick) avoids wrapping 1 per tensor.
    torch._foreach_add_(state_steps, torch.tensor(1.0), alpha=1.0)
    ts = [s.item() for s in state_steps]
    c = [(1 - beta2**t) ** 0.5 for t in ts]                                    # √(1 − β2^t)
    step_size_c = [-(lr / (1 - beta1**t)) * c_i for t, c_i in zip(ts, c)]     # −γ/(1 − β1^t) · c
    eps_c = [eps * c_i for c_i in c]                                          # ε · c

    lists = [params, grads, exp_avgs, exp_avg_sqs] + ([max_exp_avg_sqs] if amsgrad else [])
    for (theta, g, m, v, *v_max), (step_size_b, eps_b) in _blocks(lists, [step_size_c, eps_c]):
        if maximize:
            g = torch._foreach_neg(g)
        if weight_decay != 0:
            if decoupled_weight_decay:
                torch._foreach_mul_(theta, 1 - lr * weight_decay)   # AdamW: θ ← θ(1 − γλ)
            elif maximize:  # g is already a fresh copy
                torch._foreach_add_(g, theta, alpha=weight_decay)
            else:
                g = torch._foreach_add(g, theta, alpha=weight_decay)  # Adam: g ← g + λθ

        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, 1 - beta2)
        del g
        if amsgrad:
            torch._foreach_maximum_(v_max[0], v)
            v = v_max[0]
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, eps_b)
        torch._foreach_addcdiv_(theta, m, denom, step_size_b)


# Elements per block on CPU: 2^19 fp32 elements · 6 arrays ≈ 12 MB, inside a 32 MB L3.
_CPU_BLOCK_NUMEL = 1 << 19


def _blocks(lists: list[list[Tensor]], scalars: list[list[float]]):
    """Yields (tensor lists, scalar lists) blocks: one (device, dtype) each, about _CPU_BLOCK_NUMEL long on CPU.

    A CPU tensor longer than a block whose companions are all contiguous is
    cut into views (they share storage, so the in-place update lands in the
    parameter); off the CPU a whole (device, dtype) group is one block.
    """
    for idx in _group_by_device_and_dtype(lists[0]):
        if lists[0][idx[0]].device.type != "cpu":
            yield [[lst[i] for i in idx] for lst in lists], [[sc[i] for i in idx] for sc in scalars]
            continue
        block: list[list[Tensor]] = [[] for _ in lists]
        block_scalars: list[list[float]] = [[] for _ in scalars]
        numel = 0
        for i in idx:
            tensors = [lst[i] for lst in lists]
            if tensors[0].numel() > _CPU_BLOCK_NUMEL and all(t.is_contiguous() for t in tensors):
                pieces = [t.view(-1).split(_CPU_BLOCK_NUMEL) for t in tensors]
            else:
                pieces = [(t,) for t in tensors]
            for j in range(len(pieces[0])):
                for b, p in zip(block, pieces):
                    b.append(p[j])
                for b, sc in zip(block_scalars, scalars):
                    b.append(sc[i])
                numel += pieces[0][j].numel()
                if numel >= _CPU_BLOCK_NUMEL:
                    yield block, block_scalars
                    block, block_scalars, numel = [[] for _ in lists], [[] for _ in scalars], 0
        if block[0]:
            yield block, block_scalars


def _group_by_device_and_dtype(tensors: list[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` split by (device, dtype), first-seen order; foreach ops need uniform lists."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return list(groups.values())
