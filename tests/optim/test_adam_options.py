"""Adam/AdamW options as torch has them: differentiable steps, Tensor hyperparameters, capturable, errors.

The properties are those torch's test/test_optim.py and test/optim/test_optim.py
check (gradcheck of a differentiable step, Tensor lr of 0, 1 and 2 dims, no-op
steps, state-dict round trips, error types and messages), written against our
classes, with torch's classes as the reference where they apply.
"""
import copy
import re

import pytest
import torch
from torch.autograd import gradcheck

from deepnotes.optim import Adam, AdamW

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")
PAIRS = {"Adam": (Adam, torch.optim.Adam), "AdamW": (AdamW, torch.optim.AdamW)}
IMPLS = {"for-loop": dict(foreach=False), "fused": dict(fused=True)}


# --- differentiable=True: gradients through the step ----------------------------------------------------

def one_step(p, grad, state, cls, kwargs, *state_values):
    """θ and the state after one step, as functions of θ, g and the state (torch's _diff_fn)."""
    p = p.clone()
    p.grad = grad
    opt = cls([p], **kwargs)
    opt.state[p].update({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()})
    opt.step()
    return (p,) + tuple(v for v in opt.state[p].values() if isinstance(v, torch.Tensor) and v.requires_grad)


def fresh_state(gen):
    # `step` is a counter, not a variable: it must not require grad.
    return {"step": torch.tensor(10.0, dtype=F64),
            **{k: torch.rand(10, generator=gen, dtype=F64, requires_grad=True)
               for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")}}


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_one_differentiable_step_passes_gradcheck(cls):
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(10, generator=gen, dtype=F64, requires_grad=True)
    grad = torch.rand(10, generator=gen, dtype=F64, requires_grad=True)
    state = fresh_state(gen)
    kwargs = {"lr": 0.9, "differentiable": True, "amsgrad": True, "weight_decay": 0.1}
    assert gradcheck(one_step, (p, grad, state, cls, kwargs, *state.values()))


def two_steps_then_loss(params, grad, state, cls, kwargs, *hyper_values):
    """The loss after two differentiable steps on (Σθ − 2)², as a function of the Tensor hyperparameters
    (torch's _multistep_backprop_diff_hyperparams_fn, reduced to the meta-loss)."""
    params = params.clone()
    params.grad = grad
    kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    if "beta1" in kwargs:
        kwargs["betas"] = (kwargs.pop("beta1"), kwargs.pop("beta2"))
    opt = cls([params], **kwargs)
    opt.state[params].update({k: v.clone() for k, v in state.items()})
    for _ in range(2):
        loss = (params.sum() - 2.0) ** 2
        loss.backward(inputs=(params,), create_graph=True)
        opt.step()
        opt.zero_grad()
    return loss


HYPER = {
    "lr": lambda: {"lr": torch.tensor(0.001, dtype=F64, requires_grad=True)},
    "lr-1d": lambda: {"lr": torch.tensor([0.001], dtype=F64, requires_grad=True)},
    "weight_decay": lambda: {"weight_decay": torch.tensor(0.999, dtype=F64, requires_grad=True)},
    "betas": lambda: {"beta1": torch.tensor(0.9, dtype=F64, requires_grad=True),
                      "beta2": torch.tensor(0.999, dtype=F64, requires_grad=True)},
    "all": lambda: {**HYPER["lr"](), **HYPER["weight_decay"](), **HYPER["betas"]()},
}


# Backpropagating through .grad with create_graph=True is the point here; torch warns about the cycle it makes.
BACKWARD_CYCLE = pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")


@BACKWARD_CYCLE
@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("which", HYPER, ids=HYPER.keys())
def test_the_loss_after_two_steps_is_differentiable_in_the_hyperparameters(cls, which):
    gen = torch.Generator().manual_seed(1)
    params = torch.rand(10, generator=gen, dtype=F64, requires_grad=True)
    grad = torch.rand(10, generator=gen, dtype=F64, requires_grad=True)
    state = {k: v.detach() for k, v in fresh_state(gen).items()}
    hyper = HYPER[which]()
    kwargs = {"differentiable": True, **hyper}
    assert gradcheck(lambda *h: two_steps_then_loss(params, grad, state, cls, dict(kwargs, **dict(zip(hyper, h)))),
                     tuple(hyper.values()))


@BACKWARD_CYCLE
@pytest.mark.parametrize("pair", PAIRS, ids=PAIRS.keys())
def test_a_differentiable_step_and_its_gradients_are_torchs_bit_for_bit(pair):
    results = []
    for cls in PAIRS[pair]:
        gen = torch.Generator().manual_seed(2)
        leaf = torch.rand(6, generator=gen, dtype=F64, requires_grad=True)
        lr = torch.tensor(0.01, dtype=F64, requires_grad=True)
        betas = (torch.tensor(0.8, dtype=F64, requires_grad=True), torch.tensor(0.99, dtype=F64, requires_grad=True))
        w = torch.linspace(-1, 1, 6, dtype=F64)
        p = leaf.clone()
        opt = cls([p], lr=lr, betas=betas, weight_decay=0.1, maximize=True, differentiable=True)
        for _ in range(3):
            (((w * p).sum() - 1) ** 2).backward(inputs=(p,), create_graph=True)
            opt.step()
            opt.zero_grad()
        grads = torch.autograd.grad(((w * p).sum() - 1) ** 2, (leaf, lr, *betas))
        results.append((p.detach(), grads))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_a_step_counter_that_requires_grad_is_refused():
    p = torch.rand(3, dtype=F64, requires_grad=True).clone()
    p.grad = torch.ones(3, dtype=F64)
    opt = Adam([p], differentiable=True)
    opt.state[p].update(step=torch.tensor(1.0, requires_grad=True), exp_avg=torch.zeros(3, dtype=F64),
                        exp_avg_sq=torch.zeros(3, dtype=F64))
    with pytest.raises(RuntimeError, match="`requires_grad` is not supported for `step` in differentiable mode"):
        opt.step()


# --- Tensor lr and betas ---------------------------------------------------------------------------------

def fit_five_steps(cls, **kw):
    torch.manual_seed(3)
    weight, bias, x = torch.randn(10, 5), torch.randn(10), torch.randn(5)
    weight, bias = weight.requires_grad_(), bias.requires_grad_()
    opt = cls([weight, bias], **kw)
    for _ in range(5):
        opt.zero_grad()
        (weight.mv(x) + bias).pow(2).sum().backward()
        opt.step()
    return weight.detach(), bias.detach()


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPLS.keys())
@pytest.mark.parametrize("num_dim", [0, 1, 2])
def test_a_tensor_lr_of_any_dimension_equals_the_float(cls, impl, num_dim):
    # torch's test_tensor_lr; bit-exact here since the Tensor is read as the same double.
    ref = fit_five_steps(cls, lr=1e-3, weight_decay=0.1, **IMPLS[impl])
    got = fit_five_steps(cls, lr=torch.tensor(1e-3).reshape([1] * num_dim), weight_decay=0.1, **IMPLS[impl])
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPLS.keys())
def test_tensor_betas_equal_float_betas(cls, impl):
    ref = fit_five_steps(cls, betas=(0.8, 0.99), amsgrad=True, **IMPLS[impl])
    got = fit_five_steps(cls, betas=(torch.tensor([[0.8]]), torch.tensor(0.99)), amsgrad=True, **IMPLS[impl])
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("pair", PAIRS, ids=PAIRS.keys())
def test_tensor_hyperparameters_on_the_for_loop_are_torchs_bit_for_bit(pair):
    kw = dict(lr=torch.tensor(3e-3), betas=(torch.tensor(0.8), torch.tensor(0.99)), weight_decay=0.1, amsgrad=True)
    ours, theirs = (fit_five_steps(cls, **kw) for cls in PAIRS[pair])
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


# --- capturable -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pair", PAIRS, ids=PAIRS.keys())
@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
def test_capturable_on_the_cpu_fails_at_the_step_as_torchs(pair, foreach):
    errors = []
    for cls in PAIRS[pair]:
        p = torch.nn.Parameter(torch.ones(2))
        p.grad = torch.ones(2)
        opt = cls([p], capturable=True, foreach=foreach)  # accepted, as by torch
        with pytest.raises(AssertionError, match="If capturable=True, params and state_steps must be on") as err:
            opt.step()
        errors.append(str(err.value))
        assert opt.state[p]["step"].dtype == torch.float32  # capturable keeps `step` beside the parameter
    assert errors[0] == errors[1]


# --- errors: torch's types and messages ------------------------------------------------------------

P = [torch.nn.Parameter(torch.ones(1))]
CONSTRUCTION_ERRORS = [
    dict(lr=-1e-3), dict(lr=float("nan")), dict(eps=-1.0), dict(betas=(1.0, 0.0)), dict(betas=(0.0, 1.0)),
    dict(weight_decay=-1), dict(lr=torch.tensor(0.001), foreach=True), dict(lr=torch.tensor([0.001, 0.001])),
    dict(betas=(0.9, torch.tensor(0.99))), dict(betas=(torch.tensor(0.9), 0.99)), dict(betas=(0, 0.99)),
    dict(betas=(torch.tensor(0.9), torch.tensor(0.99)), foreach=True),
    dict(betas=(torch.tensor(0.9), torch.tensor([0.99, 0.9]))),
    dict(fused=True, differentiable=True), dict(fused=True, foreach=True),
]


@pytest.mark.parametrize("pair", PAIRS, ids=PAIRS.keys())
@pytest.mark.parametrize("kwargs", CONSTRUCTION_ERRORS, ids=[repr(k) for k in CONSTRUCTION_ERRORS])
def test_each_bad_hyperparameter_raises_torchs_exception_and_message(pair, kwargs):
    ours_cls, torch_cls = PAIRS[pair]
    with pytest.raises(Exception) as theirs:
        torch_cls(P, **kwargs)
    with pytest.raises(theirs.type, match=re.escape(str(theirs.value))) as ours:
        ours_cls(P, **kwargs)
    assert type(ours.value) is type(theirs.value)


@pytest.mark.parametrize("pair", PAIRS, ids=PAIRS.keys())
def test_a_tensor_lr_set_after_construction_fails_foreach_at_the_step_as_torchs(pair):
    for cls in PAIRS[pair]:
        p = torch.nn.Parameter(torch.ones(2))
        p.grad = torch.ones(2)
        opt = cls([p], foreach=True)
        opt.param_groups[0]["lr"] = torch.tensor(0.01)
        with pytest.raises(RuntimeError, match="lr as a Tensor is not supported for capturable=False and foreach=True"):
            opt.step()


# --- steps that must not change anything -------------------------------------------------------------

ALL_IMPLS = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True),
             "differentiable": dict(differentiable=True)}


@pytest.mark.parametrize("impl", ALL_IMPLS, ids=ALL_IMPLS.keys())
def test_zero_gradients_leave_adam_without_decay_exactly_where_it_was(impl):
    p = torch.randn(5, 1).requires_grad_()
    start = p.detach().clone()
    param = p.detach() if impl == "differentiable" else p  # a differentiable step updates a non-leaf in place
    opt = Adam([param], amsgrad=True, **ALL_IMPLS[impl])
    param.grad = torch.zeros_like(param)
    for _ in range(3):
        opt.step()
    assert torch.equal(param.detach(), start)


@pytest.mark.parametrize("impl", ALL_IMPLS, ids=ALL_IMPLS.keys())
def test_gradients_are_never_written_into(impl):
    p = torch.randn(5, 1).requires_grad_()
    param = p.detach() if impl == "differentiable" else p
    opt = AdamW([param], weight_decay=0.1, maximize=True, **ALL_IMPLS[impl])
    param.grad = torch.rand_like(param)
    version = param.grad._version
    for _ in range(5):
        opt.step()
    assert param.grad._version == version


# --- state dicts ------------------------------------------------------------------------------------

def prime(cls, **kw):
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2))
    x = torch.rand(1, 4, 16, 16)
    opt = cls(model.parameters(), **kw)

    def step():
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()

    for _ in range(3):
        step()
    return model, opt, step


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPLS.keys())
def test_an_older_state_dict_without_the_newer_flags_or_a_tensor_step_loads_and_steps(cls, impl):
    # torch's test_can_load_older_state_dict and test_load_nontensor_step.
    model, opt, step = prime(cls, weight_decay=0.1, amsgrad=True, **IMPLS[impl])
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        for flag in ("foreach", "differentiable", "fused", "maximize", "capturable", "decoupled_weight_decay"):
            group.pop(flag, None)
    for state in old["state"].values():
        state["step"] = state["step"].item()
    opt.load_state_dict(old)
    assert all(torch.is_tensor(s["step"]) for s in opt.state.values())
    step()
    assert opt.param_groups[0]["decoupled_weight_decay"] is (cls is AdamW)


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPLS.keys())
def test_state_dict_is_deterministic_and_a_loaded_copy_steps_in_lock_step(cls, impl):
    # torch's test_state_dict_deterministic.
    model, opt, _ = prime(cls, lr=0.01, **IMPLS[impl])
    twin = copy.deepcopy(model)
    opt_twin = cls(twin.parameters(), lr=0.01, **IMPLS[impl])
    opt_twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    x = torch.rand(1, 4, 16, 16)
    for _ in range(5):
        for m, o in ((model, opt), (twin, opt_twin)):
            o.zero_grad()
            m(x).sum().backward()
            o.step()
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    torch.testing.assert_close(opt.state_dict(), opt_twin.state_dict(), rtol=0, atol=0)


def test_adam_and_adamw_keep_torchs_decoupled_weight_decay_rules_across_loads():
    # torch's test_adamw_serialization.
    model = torch.nn.Linear(5, 5)
    adamw_sd = AdamW(model.parameters()).state_dict()
    adam = Adam(model.parameters())
    adam.load_state_dict(adamw_sd)
    assert adam.param_groups[0]["decoupled_weight_decay"] is True  # Adam takes it from the state dict
    adam_sd = Adam(model.parameters()).state_dict()
    assert adam_sd["param_groups"][0]["decoupled_weight_decay"] is False
    for sd in (adam_sd, {**adamw_sd, "param_groups": [{k: v for k, v in adamw_sd["param_groups"][0].items()
                                                        if k != "decoupled_weight_decay"}]}):
        adamw = AdamW(model.parameters())
        adamw.load_state_dict(copy.deepcopy(sd))
        assert adamw.param_groups[0]["decoupled_weight_decay"] is True  # AdamW always decouples


# --- complex parameters ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
def test_complex_parameters_step_as_their_real_views(cls, foreach):
    # torch's test_complex: complex and real parameters mixed, against their view_as_real twins.
    gen = torch.Generator().manual_seed(5)
    complex_params = [torch.randn(10, 5, dtype=torch.complex64, generator=gen).requires_grad_(),
                      torch.randn(10, 5, generator=gen).requires_grad_()]
    real_params = [torch.view_as_real(p).detach().clone().requires_grad_() if p.is_complex()
                   else p.detach().clone().requires_grad_() for p in complex_params]
    kw = dict(weight_decay=0.1, amsgrad=True, maximize=True, foreach=foreach)
    opt_c, opt_r = cls(complex_params, **kw), cls(real_params, **kw)
    for _ in range(3):
        for pc, pr in zip(complex_params, real_params):
            pr.grad = torch.randn(pr.shape, generator=gen)
            pc.grad = torch.view_as_complex(pr.grad) if pc.is_complex() else pr.grad.clone()
        opt_c.step()
        opt_r.step()
    for pc, pr in zip(complex_params, real_params):
        assert torch.equal(torch.view_as_real(pc) if pc.is_complex() else pc, pr)
