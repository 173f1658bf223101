"""fused=True: the C++ kernel against torch's fused kernel, the pure-torch reference and the for-loop.

The protocol and tolerances of the for-loop comparison are those of torch's
test_optim.py (test_fused_matches_forloop); the kernel comparisons are tighter.
"""
import copy
import itertools
import warnings

import pytest
import torch

import deepnotes.optim._fused_adam as fused_module
from deepnotes.optim import Adam, AdamW

pytestmark = pytest.mark.usefixtures("one_thread")
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
IDS = ["f64", "f32", "f16", "bf16"]
# Kernel vs kernel: a few units in the last place of each dtype.
ULPS = {torch.float64: dict(rtol=1e-14, atol=1e-15), torch.float32: dict(rtol=5e-7, atol=1e-7),
        torch.float16: dict(rtol=2e-3, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5)}


@pytest.fixture(scope="module")
def kernel():
    op = fused_module.load_kernel()
    if op is None:
        pytest.skip(f"the fused Adam C++ kernel could not be built: {fused_module.build_info()['error']}")
    return op


def tensor_lists(dtype, amsgrad, seed=0, sizes=((), (7,), (3, 5), (40_000,))):
    """params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps: mid-run state, one tensor per size
    (a 0-dim one, odd sizes that leave a vector tail, one of several 16K-element chunks)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, scale=1.0, positive=False):
        t = torch.rand(shape, generator=gen) if positive else torch.randn(shape, generator=gen)
        return (t * scale).to(dtype)

    lists = [[rand(s) for s in sizes], [rand(s, 1e-1) for s in sizes], [rand(s, 1e-2) for s in sizes],
             [rand(s, 1e-3, True) for s in sizes], [rand(s, 2e-3, True) for s in sizes] if amsgrad else [],
             [torch.tensor(4.0) for _ in sizes]]
    return lists


def clone(lists):
    return [[t.clone() for t in lst] for lst in lists]


def assert_lists_close(a, b, **tol):
    for la, lb in zip(a, b):
        for x, y in zip(la, lb):
            torch.testing.assert_close(x, y, **tol)


# --- the kernel against torch's fused kernel and the pure-torch reference ---------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("amsgrad, adamw, maximize, weight_decay",
                         [c for c in itertools.product([False, True], [False, True], [False, True], [0.0, 0.1])])
def test_kernel_equals_torchs_fused_kernel(kernel, dtype, amsgrad, adamw, maximize, weight_decay):
    ours = tensor_lists(dtype, amsgrad)
    theirs = clone(ours)
    hyper = dict(lr=0.01, beta1=0.9, beta2=0.999, weight_decay=weight_decay, eps=1e-8, amsgrad=amsgrad,
                 maximize=maximize)
    torch_fused = torch._fused_adamw_ if adamw else torch._fused_adam_
    for _ in range(3):
        kernel(*ours, decoupled_weight_decay=adamw, **hyper)
        torch._foreach_add_(theirs[5], 1)  # torch's kernel leaves the step counters to the caller
        torch_fused(*theirs, grad_scale=None, found_inf=None, **hyper)
    assert_lists_close(ours, theirs, **ULPS[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("adamw", [False, True], ids=["Adam", "AdamW"])
@pytest.mark.parametrize("beta1", [0.9, 0.3], ids=["lerp-from-m", "lerp-from-g"])  # torch's two-sided lerp
def test_kernel_equals_the_pure_torch_reference(kernel, dtype, adamw, beta1):
    ours = tensor_lists(dtype, amsgrad=True, seed=1)
    ref = clone(ours)
    scale, found_inf = torch.tensor(4.0), torch.tensor(0.0)
    hyper = dict(lr=0.01, beta1=beta1, beta2=0.99, weight_decay=0.1, eps=1e-8, amsgrad=True, maximize=True)
    for _ in range(2):
        kernel(*ours, decoupled_weight_decay=adamw, grad_scale=scale, found_inf=found_inf, **hyper)
        for i in range(len(ref[0])):
            fused_module.fused_adam_reference(*(lst[i] for lst in ref), scale, found_inf,
                                              decoupled_weight_decay=adamw, **hyper)
    # The kernel fuses two multiply-adds where the reference rounds twice: a unit or two in the last place.
    assert_lists_close(ours, ref, **ULPS[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("width", [7, 64], ids=["portable-tail", "vector"])
def test_16_bit_reads_and_writes_are_torchs_casts_for_every_bit_pattern(kernel, dtype, width):
    # Each 16-bit pattern is read and written back (lr = 0) and divided by 3 (grad_scale, unscaled in place):
    # the kernel's conversions against torch's casts. Tensors of 7 elements take the scalar tail only.
    values = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    params, grads = list(values.clone().split(width)), list(values.clone().split(width))
    zeros = [torch.zeros_like(t) for t in params]
    kernel(params, grads, zeros, [z.clone() for z in zeros], [], [torch.tensor(0.0) for _ in params], lr=0.0,
           beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False,
           decoupled_weight_decay=False, grad_scale=torch.tensor([3.0]))
    finite = values.isfinite()
    assert torch.equal(torch.cat(params)[finite], values[finite])
    unscaled, expected = torch.cat(grads), (values.float() / 3.0).to(dtype)
    assert torch.equal(unscaled.isnan(), expected.isnan())
    assert torch.equal(unscaled[~expected.isnan()], expected[~expected.isnan()])


def test_the_kernel_is_thread_count_independent(kernel):
    n = torch.get_num_threads()
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        lists = tensor_lists(torch.float32, amsgrad=True, sizes=((100_000,), (33,), (50_001,)))
        kernel(*lists, lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, amsgrad=True, maximize=False,
               decoupled_weight_decay=True)
        results.append(lists)
    torch.set_num_threads(n)
    assert all(torch.equal(x, y) for la, lb in zip(*results) for x, y in zip(la, lb))


# --- the optimizer: torch's test_fused_matches_forloop protocol ---------------------------------------

# torch's toleranceOverride for this test (common_optimizers: "the non-fused kernels have more dtype casts").
LOOP_TOL = {torch.float16: dict(rtol=5e-3, atol=5e-3), torch.bfloat16: dict(rtol=5e-3, atol=5e-3)}
CONFIGS = {"default": {}, "lr-0.01": dict(lr=0.01), "wd-0.1": dict(weight_decay=0.1),
           "wd-maximize": dict(weight_decay=0.1, maximize=True), "wd-amsgrad": dict(weight_decay=0.1, amsgrad=True)}


def make_model(dtype):
    """torch's _test_derived_optimizers model, with a 0-dim parameter last (which, there as here, has no
    gradient after the first zero_grad)."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1),
                                torch.nn.Sigmoid()).to(dtype)
    zero_dim = torch.zeros((), dtype=dtype, requires_grad=True)  # torch: torch.empty, not deterministic
    zero_dim.grad = torch.rand_like(zero_dim)
    return model, list(model.parameters()) + [zero_dim]


def compare_in_lockstep(make_ref, make_new, dtype, **tol):
    """torch's _compare_between: 7 steps, no gradients at step 2, model[2] frozen at steps 3-4; after each
    step the parameters and states are compared, then the new run is reset to the reference (so the
    tolerance bounds one step's error, not seven)."""
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
    runs = []
    for make in (make_ref, make_new):
        model, params = make_model(dtype)
        runs.append((model, params, make(params)))
    for i in range(7):
        for model, _, opt in runs:
            opt.zero_grad()
            model[2].requires_grad_(i not in (3, 4))
            if i != 2:
                model(x).sum().backward()
            opt.step()
        (_, ref_params, ref_opt), (_, new_params, new_opt) = runs
        for a, b in zip(ref_params, new_params):
            pairs = [(a, b)] + [(ref_opt.state[a][k], new_opt.state[b][k]) for k in ref_opt.state[a]]
            for ref, new in pairs:
                torch.testing.assert_close(new.to(ref.dtype), ref, **tol)
                with torch.no_grad():
                    new.copy_(ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIGS.keys())
@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_fused_matches_the_for_loop_within_torchs_tolerances(cls, config, dtype):
    kw = dict(CONFIGS[config], **(dict(eps=0.1) if dtype == torch.float16 else {}))  # torch's fp16 inputs
    tol = LOOP_TOL.get(dtype, {})  # else the default tolerances of the dtype, as in torch's test
    compare_in_lockstep(lambda p: cls(p, fused=False, **kw), lambda p: cls(p, fused=True, **kw), dtype, **tol)


def test_fused_keeps_step_in_float32_on_the_parameters_device():
    model, params = make_model(torch.float64)
    opt = AdamW(params, fused=True)
    model(torch.ones(1, 2, dtype=torch.float64)).sum().backward()
    opt.step()
    assert all(s["step"].dtype == torch.float32 and s["step"].device == p.device for p, s in opt.state.items())


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIGS.keys())
def test_adamw_fused_tracks_torchs_fused_adamw_over_a_training_run(config):
    def run(cls):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        opt = cls(model.parameters(), fused=True, **CONFIGS[config])
        gen = torch.Generator().manual_seed(1)
        for _ in range(50):
            x = torch.randn(16, 8, generator=gen)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True).sin()).backward()
            opt.step()
        return list(model.parameters()), opt

    (pa, oa), (pb, ob) = run(AdamW), run(torch.optim.AdamW)
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert oa.state_dict()["param_groups"] == ob.state_dict()["param_groups"]


# --- GradScaler's grad_scale and found_inf ---------------------------------------------------------

@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("with_scale", [True, False])
def test_found_inf_skips_the_step_and_its_counters(cls, with_scale):
    # torch's test_fused_does_not_step_if_foundinf (CUDA-only there), on the CPU.
    for kw in CONFIGS.values():
        params = [torch.ones(1) for _ in range(5)]
        for p in params:
            p.grad = torch.ones_like(p)
        opt = cls(params, fused=True, **kw)
        opt.grad_scale = torch.ones(1) if with_scale else None
        opt.found_inf = torch.ones(())
        opt.step()
        assert all(torch.equal(p, torch.ones(1)) for p in params)
        assert all(torch.equal(opt.state[p]["step"], torch.zeros(())) for p in params)


def test_grad_scale_unscales_the_gradients_in_place_and_steps_on_them():
    theta0, g = torch.randn(6, generator=torch.Generator().manual_seed(2)), torch.linspace(-1, 1, 6)
    scaled, plain = torch.nn.Parameter(theta0.clone()), torch.nn.Parameter(theta0.clone())
    opt_s, opt_p = AdamW([scaled], fused=True), AdamW([plain], fused=True)
    scaled.grad, plain.grad = g * 1024.0, g.clone()
    opt_s.grad_scale, opt_s.found_inf = torch.tensor([1024.0]), torch.zeros(())
    opt_s.step()
    opt_p.step()
    torch.testing.assert_close(scaled.grad, g, rtol=0, atol=0)
    torch.testing.assert_close(scaled, plain, rtol=0, atol=0)
    assert opt_s.state[scaled]["step"].item() == 1


def test_torchs_grad_scaler_drives_our_fused_step_as_it_drives_torchs():
    def run(cls):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = cls(model.parameters(), lr=0.05, fused=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
        gen = torch.Generator().manual_seed(3)
        for i in range(8):
            opt.zero_grad()
            loss = model(torch.randn(8, 4, generator=gen)).pow(2).mean()
            scaler.scale(loss * (float("inf") if i in (2, 5) else 1.0)).backward()
            scaler.step(opt)
            scaler.update()
        return [p.detach() for p in model.parameters()], opt, scaler.get_scale()

    ours, theirs = run(AdamW), run(torch.optim.AdamW)
    assert ours[2] == theirs[2]
    for a, b in zip(ours[0], theirs[0]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    first = next(iter(ours[1].state.values()))
    assert first["step"].item() == 6  # two skipped steps
    assert not hasattr(ours[1], "grad_scale")  # the scaler removes what it handed over


# --- layouts, dtypes, errors ------------------------------------------------------------------------

def test_non_dense_and_mismatched_layouts_take_a_contiguous_copy():
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(6, 10, generator=gen)
    starts = {
        "transposed": lambda: base.t().clone(),        # dense, but its (contiguous) gradient has other strides
        "strided slice": lambda: base.clone()[:, ::2],  # a view that is not dense
        "contiguous": lambda: base[0].clone(),
    }
    grads = {k: torch.randn(make().shape, generator=gen) for k, make in starts.items()}
    finals = []
    for fused in (False, True):
        params = {k: torch.nn.Parameter(make()) for k, make in starts.items()}
        opt = AdamW(params.values(), lr=0.01, amsgrad=True, fused=fused)
        for _ in range(3):
            for k, p in params.items():
                p.grad = grads[k].clone()
            opt.step()
        finals.append(params)
    assert not finals[1]["strided slice"].is_contiguous() and finals[1]["transposed"].stride() == (1, 10)
    for k in starts:
        torch.testing.assert_close(finals[1][k], finals[0][k])


def test_mixed_dtypes_in_one_group_each_match_their_own_run():
    gen = torch.Generator().manual_seed(5)
    starts = [torch.randn(5, generator=gen, dtype=d) for d in (torch.float32, torch.float64, torch.bfloat16)]
    together = [torch.nn.Parameter(t.clone()) for t in starts]
    alone = [torch.nn.Parameter(t.clone()) for t in starts]
    opt = Adam(together, fused=True, weight_decay=0.1)
    opts = [Adam([p], fused=True, weight_decay=0.1) for p in alone]
    for _ in range(3):
        for a, b in zip(together, alone):
            a.grad = torch.ones_like(a)
            b.grad = torch.ones_like(b)
        opt.step()
        for o in opts:
            o.step()
    assert all(torch.equal(a, b) for a, b in zip(together, alone))


def test_parameters_on_the_meta_device_raise_torchs_error_then_work_once_materialised():
    # torch's test_fused_error_on_params_on_meta.
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1))
    opt = AdamW(model.parameters(), fused=True)
    with torch.device("meta"):
        for p in model.parameters():
            p.grad = torch.rand_like(p)
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point Tensors"):
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.to_empty(device="cpu")
    for p in model.parameters():
        p.grad = torch.rand_like(p)
    opt.step()


def test_complex_parameters_are_refused_as_by_torch():
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="floating point Tensors") as ours:
        AdamW([p], fused=True).step()
    with pytest.raises(RuntimeError) as theirs:
        torch.optim.AdamW([p], fused=True).step()
    assert str(ours.value) == str(theirs.value)


def test_state_dicts_move_between_fused_and_the_for_loop():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    fused = AdamW(model.parameters(), fused=True, amsgrad=True)
    x = torch.randn(4, 3)

    def step(m, opt):
        opt.zero_grad()
        m(x).pow(2).sum().backward()
        opt.step()

    for _ in range(3):
        step(model, fused)
    twin = copy.deepcopy(model)
    loop = AdamW(twin.parameters(), amsgrad=True)
    sd = copy.deepcopy(fused.state_dict())
    sd["param_groups"][0]["fused"] = None  # the group's options come from the state dict
    loop.load_state_dict(sd)
    for _ in range(3):
        step(model, fused)
        step(twin, loop)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)
    back = AdamW(copy.deepcopy(twin).parameters(), fused=True, amsgrad=True)
    sd = copy.deepcopy(loop.state_dict())
    sd["param_groups"][0]["fused"] = True
    back.load_state_dict(sd)
    assert all(s["step"].dtype == torch.float32 for s in back.state.values())


# --- building: the cache key and the fallback ---------------------------------------------------------

def test_the_build_is_cached_under_a_key_of_its_source_flags_and_cpu(monkeypatch):
    key = fused_module._build_key(b"int main() {}")
    assert key == fused_module._build_key(b"int main() {}")
    assert key != fused_module._build_key(b"int main() { return 0; }")
    monkeypatch.setattr(fused_module, "_cpu_signature", lambda: "another CPU")
    assert key != fused_module._build_key(b"int main() {}")


@pytest.fixture
def fresh_loader(monkeypatch):
    """An empty load state (restored afterwards), so that a test can watch a first build fail."""
    monkeypatch.setattr(fused_module, "_state", {k: None for k in fused_module._state} | {"tried": False})


@pytest.mark.parametrize("torch_has_fused", [True, False], ids=["falls-back-to-torch", "falls-back-to-reference"])
def test_no_compiler_means_one_warning_and_the_same_numbers(fresh_loader, monkeypatch, tmp_path, torch_has_fused):
    # A real build attempt with a compiler that does not exist, in an empty cache.
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(fused_module, "_torch_has_fused_cpu", lambda: torch_has_fused)
    ours = torch.nn.Parameter(torch.linspace(-1, 1, 9))
    ref = torch.nn.Parameter(torch.linspace(-1, 1, 9))
    opt, opt_ref = AdamW([ours], fused=True, amsgrad=True), torch.optim.AdamW([ref], fused=True, amsgrad=True)
    with pytest.warns(RuntimeWarning, match="could not be built.*no-such-c"):
        for o, p in ((opt, ours), (opt_ref, ref)):
            p.grad = torch.linspace(1, -1, 9)
            o.step()
    assert fused_module.build_info()["backend"] == ("torch" if torch_has_fused else "reference")
    with warnings.catch_warnings():  # once per process, not once per step
        warnings.simplefilter("error")
        ours.grad = torch.linspace(0.5, -0.5, 9)
        ref.grad = torch.linspace(0.5, -0.5, 9)
        opt.step()
        opt_ref.step()
    torch.testing.assert_close(ours, ref, rtol=2e-7, atol=1e-7)


@pytest.mark.parametrize("torch_has_fused", [True, False], ids=["torch-kernel", "reference"])
def test_the_fallbacks_update_a_strided_parameter_right(fresh_loader, monkeypatch, torch_has_fused):
    # torch 2.13's own fused CPU kernel runs over flat memory and mis-updates a strided view;
    # the fallback hands it contiguous copies, as the C++ path does.
    def no_compiler():
        raise RuntimeError("simulated: no C++ compiler")

    monkeypatch.setattr(fused_module, "_build", no_compiler)
    monkeypatch.setattr(fused_module, "_torch_has_fused_cpu", lambda: torch_has_fused)
    base = torch.randn(6, 10, generator=torch.Generator().manual_seed(6))
    grad = torch.randn(6, 5, generator=torch.Generator().manual_seed(7))
    finals = []
    for fused in (False, True):
        p = torch.nn.Parameter(base.clone()[:, ::2])
        opt = AdamW([p], lr=0.01, fused=fused)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for _ in range(3):
                p.grad = grad.clone()
                opt.step()
        finals.append(p.detach())
    torch.testing.assert_close(finals[1], finals[0])
