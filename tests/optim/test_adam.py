"""Adam/AdamW against torch.optim and the reference values of references/fundamentals.md (a)."""
import copy
import inspect
import math

import pytest
import torch

import deepnotes.optim._foreach_adam as foreach_module
from deepnotes.optim import Adam, AdamW

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")
PATHS = {"for-loop": False, "foreach": True}
PAIRS = {"Adam": (Adam, torch.optim.Adam), "AdamW": (AdamW, torch.optim.AdamW)}
# torch's test_foreach_matches_forloop inputs for Adam.
CONFIGS = {
    "default": {},
    "lr-0.01": dict(lr=0.01),
    "wd-0.1": dict(weight_decay=0.1),
    "wd-maximize": dict(weight_decay=0.1, maximize=True),
    "wd-amsgrad": dict(weight_decay=0.1, amsgrad=True),
}


def one_scalar_run(cls, grads, theta0=1.0, **kw):
    """θ after each step of `cls` on one float64 scalar fed the given gradients."""
    theta = torch.nn.Parameter(torch.tensor(theta0, dtype=F64))
    opt = cls([theta], **kw)
    out = []
    for g in grads:
        theta.grad = torch.tensor(g, dtype=F64)
        opt.step()
        out.append(theta.item())
    return out


# --- references (a), checks 1-5 ------------------------------------------------------------

@pytest.mark.parametrize("foreach", PATHS.values(), ids=PATHS.keys())
def test_check_1_one_step_values(foreach):
    kw = dict(lr=0.1, foreach=foreach)
    assert one_scalar_run(Adam, [0.5], weight_decay=0.1, **kw)[0] == pytest.approx(0.9000000016666666, abs=1e-12)
    assert one_scalar_run(AdamW, [0.5], weight_decay=0.1, **kw)[0] == pytest.approx(0.890000002, abs=1e-12)
    assert one_scalar_run(Adam, [0.5], **kw)[0] == pytest.approx(0.900000002, abs=1e-12)
    assert one_scalar_run(AdamW, [0.5], weight_decay=0.0, **kw)[0] == pytest.approx(0.900000002, abs=1e-12)
    # torch agrees (the values above are re-derived by hand; this confirms them against torch).
    assert one_scalar_run(torch.optim.Adam, [0.5], lr=0.1, weight_decay=0.1)[0] == \
        pytest.approx(0.9000000016666666, abs=1e-12)


@pytest.mark.parametrize("foreach", PATHS.values(), ids=PATHS.keys())
def test_check_2_hundred_zero_gradient_steps_are_pure_decay(foreach):
    got = one_scalar_run(AdamW, [0.0] * 100, lr=1e-3, weight_decay=1e-2, foreach=foreach)[-1]
    assert got == pytest.approx((1 - 1e-5) ** 100, abs=1e-12)
    assert got == pytest.approx(0.9990004948383437, abs=1e-12)
    # Adam's L2 goes through m and v: with g = 0 the parameter still moves, by lr-sized steps.
    assert one_scalar_run(Adam, [0.0], lr=1e-3, weight_decay=1e-2, foreach=foreach)[0] == \
        pytest.approx(1 - 1e-3, abs=1e-9)


@pytest.mark.parametrize("foreach", PATHS.values(), ids=PATHS.keys())
def test_check_3_amsgrad_keeps_the_max_of_the_raw_v(foreach):
    got = one_scalar_run(Adam, [1.0, 0.0, 0.0], lr=0.1, amsgrad=True, foreach=foreach)
    assert got == pytest.approx([0.900000001, 0.8330276878258663, 0.7812837871703692], abs=1e-12)
    # Not plain Adam, and not the max over the bias-corrected v̂ (a common bug).
    plain = one_scalar_run(Adam, [1.0, 0.0], lr=0.1, foreach=foreach)[1]
    assert plain == pytest.approx(0.8329941765, abs=1e-9)
    assert abs(got[1] - plain) > 3e-5
    assert abs(got[1] - 0.8526315804) > 1e-2


@pytest.mark.parametrize("foreach", PATHS.values(), ids=PATHS.keys())
def test_check_4_eps_is_added_to_the_bias_corrected_sqrt_v(foreach):
    g, lr, b1, b2, eps = 1e-8, 0.1, 0.9, 0.999, 1e-8
    update = 1.0 - one_scalar_run(Adam, [g], lr=lr, foreach=foreach)[0]
    assert update == pytest.approx(lr / 2, abs=1e-12)  # m̂ = √v̂ = g = ε
    # The two placements it is not (closed forms for the first step):
    m, v = (1 - b1) * g, (1 - b2) * g * g
    kingma = lr * math.sqrt(1 - b2) / (1 - b1) * m / (math.sqrt(v) + eps)     # ε̂ form
    inside = lr * (m / (1 - b1)) / math.sqrt(v / (1 - b2) + eps)               # √(v̂ + ε)
    assert kingma == pytest.approx(0.003065, rel=1e-3) and inside == pytest.approx(1e-5, rel=1e-3)
    assert abs(update - kingma) > 0.04 and abs(update - inside) > 0.04


@pytest.mark.parametrize("pair", PAIRS, ids=PAIRS.keys())
@pytest.mark.parametrize("foreach", PATHS.values(), ids=PATHS.keys())
def test_check_5_maximize_is_the_run_on_minus_g_bit_exact(pair, foreach):
    cls = PAIRS[pair][0]
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, generator=gen, dtype=F64) for _ in range(6)]
    theta0 = torch.randn(5, generator=gen, dtype=F64)
    results = []
    for maximize, sign in ((True, 1.0), (False, -1.0)):
        theta = torch.nn.Parameter(theta0.clone())
        opt = cls([theta], lr=0.01, weight_decay=0.1, maximize=maximize, foreach=foreach)
        for g in grads:
            theta.grad = sign * g
            opt.step()
        results.append((theta.detach().clone(), opt.state[theta]))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1]["exp_avg_sq"], results[1][1]["exp_avg_sq"])


# --- parity with torch.optim (torch's test_foreach_matches_forloop protocol) -----------------

def small_model(dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1),
                                torch.nn.Sigmoid()).to(dtype)
    zero_dim = torch.nn.Parameter(torch.tensor(0.7, dtype=dtype))
    return model, zero_dim


def run_protocol(make_opt, dtype=F64, steps=7):
    """7 steps: every grad None at step 2, the first layer frozen at steps 3-4, a 0-dim parameter."""
    model, zero_dim = small_model(dtype)
    params = list(model.parameters()) + [zero_dim]
    opt = make_opt(params)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=dtype)
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        if i != 2:
            for p in model[0].parameters():
                p.requires_grad_(i not in (3, 4))
            ((model(x) * zero_dim).sum() + zero_dim**2).backward()
        opt.step()
    return params, opt


def assert_same_trajectory(ours, theirs, atol):
    (params_a, opt_a), (params_b, opt_b) = ours, theirs
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)
        state_a, state_b = opt_a.state[a], opt_b.state[b]
        assert set(state_a) == set(state_b)
        for key in state_b:  # step, exp_avg, exp_avg_sq, max_exp_avg_sq
            assert state_a[key].dtype == state_b[key].dtype, key
            torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=atol)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIGS.keys())
@pytest.mark.parametrize("pair", PAIRS, ids=PAIRS.keys())
@pytest.mark.parametrize("foreach", PATHS.values(), ids=PATHS.keys())
def test_float64_parity_with_torch_over_seven_steps(config, pair, foreach):
    ours_cls, torch_cls = PAIRS[pair]
    kw = CONFIGS[config]
    ours = run_protocol(lambda p: ours_cls(p, foreach=foreach, **kw))
    theirs = run_protocol(lambda p: torch_cls(p, foreach=False, **kw))  # torch's ground truth: the for-loop
    assert_same_trajectory(ours, theirs, atol=1e-12)
    assert ours[1].state[ours[0][0]]["step"].item() == 4  # first layer: no grad at steps 2, 3, 4


def test_the_for_loop_is_bit_exact_with_torchs():
    ours = run_protocol(lambda p: AdamW(p, weight_decay=0.1, amsgrad=True))
    theirs = run_protocol(lambda p: torch.optim.AdamW(p, weight_decay=0.1, amsgrad=True, foreach=False))
    assert_same_trajectory(ours, theirs, atol=0.0)


def test_complex_parameters_match_torch():
    gen = torch.Generator().manual_seed(3)
    theta0 = torch.randn(4, dtype=torch.complex128, generator=gen)
    grads = [torch.randn(4, dtype=torch.complex128, generator=gen) for _ in range(5)]
    finals = []
    for make in (lambda p: AdamW(p, lr=0.01, amsgrad=True), lambda p: AdamW(p, lr=0.01, amsgrad=True, foreach=True),
                 lambda p: torch.optim.AdamW(p, lr=0.01, amsgrad=True)):
        theta = torch.nn.Parameter(theta0.clone())
        opt = make([theta])
        for g in grads:
            theta.grad = g.clone()
            opt.step()
        finals.append(theta.detach())
    assert torch.equal(finals[0], finals[2])
    torch.testing.assert_close(finals[1], finals[2], rtol=0, atol=1e-12)


# --- the foreach path equals the reference ----------------------------------------------------

@pytest.mark.parametrize("pair", PAIRS, ids=PAIRS.keys())
@pytest.mark.parametrize("amsgrad", [False, True])
def test_foreach_equals_for_loop_with_blocks_split_views_and_mixed_dtypes(pair, amsgrad, monkeypatch):
    # A tiny block size makes _blocks split tensors into views and cut the list into many blocks.
    monkeypatch.setattr(foreach_module, "_CPU_BLOCK_BYTES", 7 * 8)  # 7 float64 (14 float32) elements
    cls = PAIRS[pair][0]
    gen = torch.Generator().manual_seed(5)
    shapes = [(), (3,), (20,), (4, 6), (6, 4), (1,), (50,)]
    start = [torch.randn(s, generator=gen, dtype=F64) for s in shapes]
    start[4] = start[4].t().contiguous().t()  # a non-contiguous (transposed) parameter
    start.append(torch.randn(9, generator=gen, dtype=torch.float32))  # a second (device, dtype) group
    finals = []
    for foreach in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = cls(params, lr=0.01, weight_decay=0.1, amsgrad=amsgrad, maximize=True, foreach=foreach)
        g = torch.Generator().manual_seed(6)
        for step in range(7):
            for i, p in enumerate(params):
                p.grad = None if (step == 3 and i % 2) else torch.randn(p.shape, generator=g, dtype=p.dtype)
            opt.step()
        finals.append((params, opt))
    for a, b in zip(finals[0][0], finals[1][0]):
        tol = 1e-12 if a.dtype == F64 else 1e-6
        torch.testing.assert_close(a, b, rtol=0, atol=tol)
        for key in finals[0][1].state[a]:
            torch.testing.assert_close(finals[0][1].state[a][key], finals[1][1].state[b][key], rtol=0, atol=tol)


def test_blocks_cover_every_element_once_within_the_budget(monkeypatch):
    monkeypatch.setattr(foreach_module, "_CPU_BLOCK_BYTES", 10 * 4)  # 10 float32 elements per array
    tensors = [torch.zeros(n) for n in (3, 4, 25, 7, 1, 10)]
    tensors.append(torch.zeros(4, 6).t())  # larger than a block but not contiguous: kept whole
    index = [float(i) for i in range(len(tensors))]
    blocks = list(foreach_module._blocks([tensors], [index]))
    for (views,), (scalars,) in blocks:
        assert sum(v.numel() for v in views) <= 10 or len(views) == 1
        assert len(scalars) == len(views)
        for v in views:
            v.add_(1)  # views share storage with the tensors
    assert all(torch.equal(t, torch.ones_like(t)) for t in tensors)
    assert len(blocks) == 7  # [3, 4], then 25 as [10], [10], [5], then [7, 1], [10], [24]


# --- float32 over 1,000 steps ------------------------------------------------------------------

def mlp_run(make_opt, steps=1000):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = make_opt(model.parameters())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=gen)
    y = torch.sin(x.sum(1, keepdim=True))
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return [p.detach() for p in model.parameters()], losses


@pytest.mark.parametrize("ours, theirs", [
    (lambda p: AdamW(p), lambda p: torch.optim.AdamW(p)),
    (lambda p: AdamW(p, foreach=True), lambda p: torch.optim.AdamW(p, foreach=True)),
    (lambda p: Adam(p, weight_decay=1e-3, amsgrad=True, foreach=True), lambda p: torch.optim.Adam(
        p, weight_decay=1e-3, amsgrad=True)),
], ids=["AdamW-for-loop", "AdamW-foreach", "Adam-L2-amsgrad-foreach"])
def test_float32_parity_over_1000_steps_on_a_small_mlp(ours, theirs):
    params_a, losses_a = mlp_run(ours)
    params_b, losses_b = mlp_run(theirs)
    for a, b in zip(params_a, params_b):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # torch's fp32 atol
    assert losses_a[-1] < 0.5 * losses_a[0]  # and it trains


# --- state dicts ---------------------------------------------------------------------------

def lockstep(model_a, opt_a, model_b, opt_b, steps, gen):
    for _ in range(steps):
        x = torch.randn(5, 2, generator=gen, dtype=F64)
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
        assert all(torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters()))


@pytest.mark.parametrize("pair", PAIRS, ids=PAIRS.keys())
def test_state_dict_loads_into_torch_and_back_then_lock_step(pair):
    ours_cls, torch_cls = PAIRS[pair]
    kw = dict(lr=0.01, weight_decay=0.1, amsgrad=True)
    gen = torch.Generator().manual_seed(2)
    model_a, _ = small_model(F64)
    opt_a = ours_cls(model_a.parameters(), **kw)
    model_b = copy.deepcopy(model_a)
    opt_b = torch_cls(model_b.parameters(), **kw)
    lockstep(model_a, opt_a, model_b, opt_b, 10, gen)  # same numbers from the start
    sd = opt_a.state_dict()
    ref = opt_b.state_dict()
    assert sd["param_groups"] == ref["param_groups"]  # identical layout, every key and value
    assert {k: set(v) for k, v in sd["state"].items()} == {k: set(v) for k, v in ref["state"].items()}

    # ours -> torch: a fresh torch optimizer on a copy of the weights continues in lock step with ours.
    model_t = copy.deepcopy(model_a)
    opt_t = torch_cls(model_t.parameters(), **kw)
    opt_t.load_state_dict(copy.deepcopy(sd))
    lockstep(model_a, opt_a, model_t, opt_t, 10, gen)
    # torch -> ours
    model_o = copy.deepcopy(model_t)
    opt_o = ours_cls(model_o.parameters(), **kw)
    opt_o.load_state_dict(copy.deepcopy(opt_t.state_dict()))
    lockstep(model_t, opt_t, model_o, opt_o, 10, gen)


def test_adamw_stays_decoupled_whatever_the_loaded_state_says():
    p = torch.nn.Parameter(torch.ones(2, dtype=F64))
    adam = torch.optim.Adam([p], weight_decay=0.1)
    opt = AdamW([torch.nn.Parameter(torch.ones(2, dtype=F64))])
    opt.load_state_dict(adam.state_dict())
    assert opt.param_groups[0]["decoupled_weight_decay"] is True


def test_constructor_signature_and_defaults_are_torchs():
    # AdamW adds exactly one argument, last and keyword-only, whose default keeps torch's semantics.
    extra = {Adam: [], AdamW: ["independent_weight_decay"]}
    for ours, theirs in ((Adam, torch.optim.Adam), (AdamW, torch.optim.AdamW)):
        a, b = inspect.signature(ours.__init__).parameters, inspect.signature(theirs.__init__).parameters
        assert list(a) == list(b) + extra[ours]
        assert {k: (v.default, v.kind) for k, v in a.items() if k in b} == \
            {k: (v.default, v.kind) for k, v in b.items()}
    flag = inspect.signature(AdamW.__init__).parameters["independent_weight_decay"]
    assert (flag.default, flag.kind) == (False, inspect.Parameter.KEYWORD_ONLY)


# --- edge cases and errors -------------------------------------------------------------------

def test_parameters_without_gradients_are_untouched_and_get_no_state():
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = AdamW([used, unused], weight_decay=0.5)
    used.grad = torch.ones(3)
    opt.step()
    assert torch.equal(unused, torch.ones(3)) and len(opt.state[unused]) == 0
    assert not torch.equal(used, torch.ones(3))


def test_tensor_lr_on_the_for_loop_matches_torch():
    finals = []
    for cls in (AdamW, torch.optim.AdamW):
        theta = torch.nn.Parameter(torch.ones(3))
        opt = cls([theta], lr=torch.tensor(0.01))
        for g in (0.5, -0.2, 0.1):
            theta.grad = torch.full((3,), g)
            opt.step()
        finals.append(theta.detach())
    assert torch.equal(finals[0], finals[1])


def test_goes_downhill_with_a_closure():
    w = torch.nn.Parameter(torch.tensor([2.0, -1.0]))
    opt = Adam([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    first = opt.step(closure).item()
    for _ in range(19):
        last = opt.step(closure).item()
    assert last < first


def test_sparse_gradients_are_refused():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        Adam([p]).step()


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=-1e-3), "lr"), (dict(lr=math.nan), "lr"), (dict(eps=-1.0), "eps"),
    (dict(betas=(1.0, 0.999)), r"betas\[0\]"), (dict(betas=(0.9, -0.1)), r"betas\[1\]"),
    (dict(weight_decay=-0.1), "weight_decay"), (dict(lr=torch.tensor(0.1), foreach=True), "lr"),
    (dict(lr=torch.tensor([0.1, 0.2])), "lr"), (dict(betas=(0.9, torch.tensor(0.99))), "betas"),
    (dict(betas=(torch.tensor(0.9), torch.tensor(0.99)), foreach=True), r"betas\[0\]"),
])
@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_bad_hyperparameters_raise_torchs_value_error_naming_them(cls, kwargs, name):
    with pytest.raises(ValueError, match=name) as ours:
        cls([torch.nn.Parameter(torch.ones(1))], **kwargs)
    torch_cls = torch.optim.Adam if cls is Adam else torch.optim.AdamW
    with pytest.raises(ValueError) as theirs:
        torch_cls([torch.nn.Parameter(torch.ones(1))], **kwargs)
    assert str(ours.value).startswith(str(theirs.value))  # torch's message, then the argument's name


def test_a_malformed_betas_pair_is_a_value_error_naming_betas():
    with pytest.raises(ValueError, match="betas"):  # torch: IndexError from betas[1]
        Adam([torch.nn.Parameter(torch.ones(1))], betas=(0.9,))


# --- AdamW(independent_weight_decay=True): θ ← θ(1 − η_t·λ), η_t = γ_t/γ_0 -------------------------

ETAS = [0.0, 1.0, 0.5, 0.25, 0.9, 0.1]  # schedule multipliers η_1..η_6, a warm-up step with η = 0 first


def zero_gradient_run(independent, etas, gamma0, lam, theta0, foreach):
    """θ after steps with zero gradients and lr γ_0·η_i, as a float64 vector."""
    theta = torch.nn.Parameter(theta0.clone())
    opt = AdamW([theta], lr=gamma0, weight_decay=lam, independent_weight_decay=independent, foreach=foreach)
    out = []
    for eta in etas:
        opt.param_groups[0]["lr"] = gamma0 * eta
        theta.grad = torch.zeros_like(theta)
        opt.step()
        out.append(theta.detach().clone())
    return out


@pytest.mark.parametrize("foreach", PATHS.values(), ids=PATHS.keys())
def test_zero_gradient_steps_decay_by_the_schedule_multiplier_times_lambda(foreach):
    # With g = 0, m = v = 0 and Adam's step m/(√v̂ + ε) is 0: only the decay moves θ.
    gamma0, lam = 0.05, 0.3
    theta0 = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    paper = zero_gradient_run(True, ETAS, gamma0, lam, theta0, foreach)
    torch_form = zero_gradient_run(False, ETAS, gamma0, lam, theta0, foreach)
    for t in range(1, len(ETAS) + 1):
        want_paper = theta0 * math.prod(1 - eta * lam for eta in ETAS[:t])             # Π(1 − η_i·λ)
        want_torch = theta0 * math.prod(1 - gamma0 * eta * lam for eta in ETAS[:t])    # Π(1 − γ_i·λ)
        torch.testing.assert_close(paper[t - 1], want_paper, rtol=1e-14, atol=0)
        torch.testing.assert_close(torch_form[t - 1], want_torch, rtol=1e-14, atol=0)
    # The two forms differ by a factor γ_0 in the decay: not the same trajectory.
    assert (paper[-1] - torch_form[-1]).abs().max() > 0.1


def seeded_net(seed):
    """A float64 MLP whose weights come from a generator (no global seeding)."""
    from deepnotes.nn.init import reset_parameters_

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(F64)
    return reset_parameters_(net, torch.Generator().manual_seed(seed))


def scheduled_run(make_opt, steps=12, seed=0):
    """Parameters and optimizer after `steps` steps under LambdaLR(warm-up + cosine) on a regression."""
    from deepnotes.optim.schedules import get_schedule, lambda_lr

    net = seeded_net(seed)
    opt = make_opt(net.parameters())
    sched = lambda_lr(opt, get_schedule("cosine", warmup_steps=3, total_steps=steps))
    gen = torch.Generator().manual_seed(seed + 1)
    trajectory = []
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen, dtype=F64)
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), torch.sin(x.sum(1, keepdim=True))).backward()
        opt.step()
        sched.step()
        trajectory.append([p.detach().clone() for p in net.parameters()])
    return trajectory, opt


@pytest.mark.parametrize("foreach", PATHS.values(), ids=PATHS.keys())
def test_independent_lambda_is_torch_form_with_lambda_over_initial_lr_step_for_step(foreach):
    gamma0, lam = 3e-2, 2e-3
    ours, _ = scheduled_run(lambda p: AdamW(p, lr=gamma0, weight_decay=lam, independent_weight_decay=True,
                                            foreach=foreach))
    theirs, _ = scheduled_run(lambda p: torch.optim.AdamW(p, lr=gamma0, weight_decay=lam / gamma0, foreach=False))
    for step_a, step_b in zip(ours, theirs):
        for a, b in zip(step_a, step_b):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # and it is not the torch form with the same λ (the decay is γ_0 = 0.03 times weaker there)
    same_lambda, _ = scheduled_run(lambda p: torch.optim.AdamW(p, lr=gamma0, weight_decay=lam))
    assert max((a - b).abs().max() for a, b in zip(ours[-1], same_lambda[-1])) > 1e-6


def test_flag_off_is_bit_identical_to_torch_adamw_under_a_schedule():
    kw = dict(lr=3e-2, weight_decay=0.1, amsgrad=True)
    ours, opt_a = scheduled_run(lambda p: AdamW(p, independent_weight_decay=False, **kw))
    theirs, opt_b = scheduled_run(lambda p: torch.optim.AdamW(p, **kw))  # both: the for-loop on CPU
    for step_a, step_b in zip(ours, theirs):
        assert all(torch.equal(a, b) for a, b in zip(step_a, step_b))
    sd_a, sd_b = opt_a.state_dict(), opt_b.state_dict()
    assert sd_a["param_groups"] == sd_b["param_groups"]  # no extra key when the flag is off
    for k in sd_b["state"]:
        assert all(torch.equal(sd_a["state"][k][key], sd_b["state"][k][key]) for key in sd_b["state"][k])


def test_independent_foreach_equals_for_loop_under_a_schedule():
    kw = dict(lr=3e-2, weight_decay=0.05, independent_weight_decay=True)
    loop, _ = scheduled_run(lambda p: AdamW(p, foreach=False, **kw))
    fast, _ = scheduled_run(lambda p: AdamW(p, foreach=True, **kw))
    for a, b in zip(loop[-1], fast[-1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_a_param_group_added_later_decays_against_its_own_initial_lr():
    lam, gamma_a, gamma_b = 0.2, 0.1, 0.02
    a = torch.nn.Parameter(torch.ones(2, dtype=F64))
    b = torch.nn.Parameter(torch.ones(2, dtype=F64))
    opt = AdamW([a], lr=gamma_a, weight_decay=lam, independent_weight_decay=True)
    opt.add_param_group({"params": [b], "lr": gamma_b})
    assert opt.param_groups[1]["initial_lr"] == gamma_b
    assert opt.param_groups[1]["independent_weight_decay"] is True
    etas = [1.0, 0.5, 0.25]
    for eta in etas:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * eta
        a.grad, b.grad = torch.zeros_like(a), torch.zeros_like(b)
        opt.step()
    want = math.prod(1 - eta * lam for eta in etas)  # the same for both groups: η_t·λ, whatever γ_0
    torch.testing.assert_close(a.detach(), torch.full((2,), want, dtype=F64), rtol=1e-14, atol=0)
    torch.testing.assert_close(b.detach(), torch.full((2,), want, dtype=F64), rtol=1e-14, atol=0)


@pytest.mark.parametrize("flag", [1, 0, "True", None, 1.0])
def test_a_non_bool_flag_raises_type_error_naming_it(flag):
    with pytest.raises(TypeError, match="independent_weight_decay"):
        AdamW([torch.nn.Parameter(torch.ones(1))], independent_weight_decay=flag)


@pytest.mark.parametrize("fresh_flag", [True, False])
def test_state_dict_round_trip_keeps_the_flag_and_initial_lr(fresh_flag):
    gamma0, lam = 3e-2, 0.5
    net_a = seeded_net(0)
    opt_a = AdamW(net_a.parameters(), lr=gamma0, weight_decay=lam, independent_weight_decay=True)
    gen = torch.Generator().manual_seed(4)

    def train(net, opt, steps, gen_state):
        g = torch.Generator()
        g.set_state(gen_state)
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * 0.5 ** step
            x = torch.randn(8, 4, generator=g, dtype=F64)
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()

    train(net_a, opt_a, 3, gen.get_state())
    sd = copy.deepcopy(opt_a.state_dict())
    assert sd["param_groups"][0]["independent_weight_decay"] is True
    assert sd["param_groups"][0]["initial_lr"] == gamma0
    # A fresh optimizer built otherwise (another lr, flag on or off) takes both from the state dict.
    net_b = copy.deepcopy(net_a)
    opt_b = AdamW(net_b.parameters(), lr=1.0, weight_decay=lam, independent_weight_decay=fresh_flag)
    opt_b.load_state_dict(sd)
    assert opt_b.param_groups[0]["independent_weight_decay"] is True
    assert opt_b.param_groups[0]["initial_lr"] == gamma0
    state = gen.get_state()
    train(net_a, opt_a, 4, state)
    train(net_b, opt_b, 4, state)
    assert all(torch.equal(a, b) for a, b in zip(net_a.parameters(), net_b.parameters()))
