"""DynamicLossScaler side by side with torch.amp.GradScaler("cpu") (references/fundamentals.md (b))."""
import copy
import math

import pytest
import torch

from deepnotes.amp import DynamicLossScaler
from deepnotes.optim import AdamW

OK, INF, NAN = "ok", "inf", "nan"


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def one_iteration(model, opt, scaler, x, kind, clip=None):
    """One scaled step; `kind` puts an inf/NaN into the loss (hence into every gradient) or not."""
    opt.zero_grad()
    loss = model(x).pow(2).mean()
    if kind == INF:
        loss = loss * math.inf
    elif kind == NAN:
        loss = loss * math.nan
    scaler.scale(loss).backward()
    if clip is not None:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    ret = scaler.step(opt)
    scaler.update()
    return ret


def replay(kinds, make_opt, clip=None, **scaler_kw):
    """Runs the same sequence through ours and torch's; returns per-step (scale, tracker, params) of both."""
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    runs = []
    for scaler in (DynamicLossScaler(**scaler_kw), torch.amp.GradScaler("cpu", **scaler_kw)):
        model = make_model()
        opt = make_opt(model.parameters())
        trace = []
        for kind in kinds:
            one_iteration(model, opt, scaler, x, kind, clip)
            trace.append((scaler.get_scale(), scaler._get_growth_tracker(),
                          [p.detach().clone() for p in model.parameters()]))
        runs.append(trace)
    return runs


def test_check_3_interval_2_over_ok_ok_inf_ok():
    ours, torchs = replay([OK, OK, INF, OK], lambda p: torch.optim.SGD(p, lr=0.1), growth_interval=2)
    assert [s for s, _, _ in ours] == [65536.0, 131072.0, 65536.0, 65536.0]
    assert [s for s, _, _ in torchs] == [65536.0, 131072.0, 65536.0, 65536.0]
    # The inf step leaves the parameters where the previous step put them.
    assert all(torch.equal(a, b) for a, b in zip(ours[1][2], ours[2][2]))
    for (s1, t1, p1), (s2, t2, p2) in zip(ours, torchs):
        assert (s1, t1) == (s2, t2)
        assert all(torch.equal(a, b) for a, b in zip(p1, p2))


OPTIMIZERS = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "deepnotes-adamw": lambda p: AdamW(p, lr=1e-2),
    "deepnotes-adamw-foreach": lambda p: AdamW(p, lr=1e-2, foreach=True),
    "torch-adam": lambda p: torch.optim.Adam(p, lr=1e-2),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("scaler_kw", [
    dict(growth_interval=3),
    dict(init_scale=1000.0, growth_factor=3.0, backoff_factor=0.3, growth_interval=2),  # not powers of 2
])
def test_random_sequences_match_torch_step_by_step(name, scaler_kw):
    gen = torch.Generator().manual_seed(7)
    kinds = [[OK, OK, OK, INF, NAN][int(i)] for i in torch.randint(0, 5, (30,), generator=gen)]
    ours, torchs = replay(kinds, OPTIMIZERS[name], clip=1.0 if name == "sgd-momentum" else None, **scaler_kw)
    for step, ((s1, t1, p1), (s2, t2, p2)) in enumerate(zip(ours, torchs)):
        assert (s1, t1) == (s2, t2), step
        assert all(torch.equal(a, b) for a, b in zip(p1, p2)), step


def test_growth_stops_when_the_grown_scale_would_overflow_float32():
    ours, torchs = replay([OK] * 4, lambda p: torch.optim.SGD(p, lr=0.0), init_scale=2.0**126,
                          growth_interval=1)
    assert [s for s, _, _ in ours] == [s for s, _, _ in torchs] == [2.0**127] * 4


def test_torch_fused_adamw_is_driven_like_any_optimizer():
    # torch's scaler hands grad_scale/found_inf to fused optimizers; ours unscales first. Same result.
    kinds = [OK, INF, OK, OK, NAN, OK]
    ours, torchs = replay(kinds, lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True), growth_interval=2)
    for (s1, _, p1), (s2, _, p2) in zip(ours, torchs):
        assert s1 == s2
        for a, b in zip(p1, p2):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_step_returns_the_optimizer_return_value_or_none_when_skipped():
    class Returning(torch.optim.SGD):
        def step(self, closure=None):
            super().step(closure)
            return "stepped"

    x = torch.ones(2, 4)
    model = make_model()
    opt, scaler = Returning(model.parameters(), lr=0.1), DynamicLossScaler()
    assert one_iteration(model, opt, scaler, x, OK) == "stepped"
    assert scaler.last_step_skipped is False
    assert one_iteration(model, opt, scaler, x, INF) is None
    assert scaler.last_step_skipped is True and scaler.found_inf is True
    assert scaler.skipped_steps == 1
    assert one_iteration(model, opt, scaler, x, OK) == "stepped"
    assert scaler.last_step_skipped is False


def test_unscale_divides_by_the_scale_and_flags_inf():
    p = torch.nn.Parameter(torch.zeros(3))
    opt, scaler = torch.optim.SGD([p], lr=1.0), DynamicLossScaler(init_scale=1024.0)
    scaler.scale((p * torch.tensor([1.0, 2.0, 3.0])).sum()).backward()
    assert torch.equal(p.grad, torch.tensor([1024.0, 2048.0, 3072.0]))
    scaler.unscale_(opt)
    assert torch.equal(p.grad, torch.tensor([1.0, 2.0, 3.0]))


def test_unscale_twice_or_after_step_raises():
    x = torch.ones(2, 4)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for scaler in (DynamicLossScaler(), torch.amp.GradScaler("cpu")):
        scaler.scale(model(x).sum()).backward()
        scaler.unscale_(opt)
        with pytest.raises(RuntimeError, match="unscale_"):
            scaler.unscale_(opt)
        scaler.step(opt)
        with pytest.raises(RuntimeError, match="after step"):
            scaler.unscale_(opt)
        with pytest.raises(RuntimeError, match="step"):
            scaler.step(opt)
        scaler.update()
        opt.zero_grad()


def test_fp16_gradients_are_refused_like_torch():
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    opt = torch.optim.SGD([p], lr=0.1)
    for scaler in (DynamicLossScaler(), torch.amp.GradScaler("cpu")):
        p.grad = None
        scaler.scale(p.float().sum()).backward()
        assert p.grad.dtype == torch.float16
        with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
            scaler.unscale_(opt)


def test_calls_out_of_order_and_closures_raise():
    scaler = DynamicLossScaler()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(RuntimeError, match="scale"):
        scaler.step(opt)
    scaler.scale(torch.ones(()))
    with pytest.raises(RuntimeError, match="Closure"):
        scaler.step(opt, closure=lambda: None)
    with pytest.raises(RuntimeError, match="No inf checks"):
        scaler.update()


def test_state_dict_round_trip_through_torch_and_back():
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    kinds = [OK, OK, INF, OK, OK, OK, NAN, OK]
    model_a, model_b = make_model(), make_model()
    opt_a, opt_b = AdamW(model_a.parameters(), lr=1e-2), AdamW(model_b.parameters(), lr=1e-2)
    ours = DynamicLossScaler(growth_interval=3)
    for kind in kinds[:4]:
        one_iteration(model_a, opt_a, ours, x, kind)
    sd = ours.state_dict()
    assert set(sd) == set(torch.amp.GradScaler("cpu").state_dict())
    # ours -> torch -> ours; then the reloaded scaler and the original move in lock step.
    theirs = torch.amp.GradScaler("cpu")
    theirs.load_state_dict(sd)
    assert theirs.state_dict() == sd
    back = DynamicLossScaler()
    back.load_state_dict(theirs.state_dict())
    assert back.state_dict() == sd
    model_b.load_state_dict(model_a.state_dict())
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # load_state_dict shares tensors
    for kind in kinds[4:]:
        one_iteration(model_a, opt_a, ours, x, kind)
        one_iteration(model_b, opt_b, back, x, kind)
        assert ours.state_dict() == back.state_dict()
        assert all(torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters()))


def test_disabled_scaler_is_a_pass_through():
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    model_a, model_b = make_model(), make_model()
    opt_a, opt_b = AdamW(model_a.parameters()), AdamW(model_b.parameters())
    scaler = DynamicLossScaler(enabled=False)
    for _ in range(3):
        loss = model_a(x).pow(2).mean()
        assert scaler.scale(loss) is loss
        opt_a.zero_grad()
        loss.backward()
        scaler.unscale_(opt_a)
        scaler.step(opt_a)
        scaler.update()
        opt_b.zero_grad()
        model_b(x).pow(2).mean().backward()
        opt_b.step()
    assert all(torch.equal(a, b) for a, b in zip(model_a.parameters(), model_b.parameters()))
    assert scaler.get_scale() == 1.0 and scaler.state_dict() == {} and not scaler.is_enabled()
    scaler.load_state_dict({"scale": 4.0})  # a no-op, as in torch
    assert scaler.get_scale() == 1.0


def test_scale_handles_lists_and_tuples():
    scaler = DynamicLossScaler(init_scale=4.0)
    a, b = scaler.scale([torch.ones(()), (torch.ones(2), torch.ones(()))])
    assert a.item() == 4.0 and torch.equal(b[0], torch.full((2,), 4.0)) and isinstance(b, tuple)
    with pytest.raises(TypeError, match="outputs"):
        scaler.scale(3.0)


@pytest.mark.parametrize("kwargs, name", [
    (dict(init_scale=0.0), "init_scale"), (dict(init_scale=math.inf), "init_scale"),
    (dict(growth_factor=1.0), "growth_factor"), (dict(backoff_factor=1.0), "backoff_factor"),
    (dict(backoff_factor=0.0), "backoff_factor"), (dict(growth_interval=0), "growth_interval"),
    (dict(growth_interval=2.5), "growth_interval"),
])
def test_bad_arguments_raise_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DynamicLossScaler(**kwargs)


def test_loss_scaling_keeps_small_fp16_gradients_alive():
    # A gradient of 1e-8 is 0 in fp16; scaled by 2^16 it survives and unscales back in fp32.
    g = torch.tensor(1e-8)
    assert g.half().item() == 0.0
    scaled = (g * DynamicLossScaler().get_scale()).half()
    assert scaled.item() != 0.0
    assert scaled.float().item() / 2.0**16 == pytest.approx(1e-8, rel=1e-3)
