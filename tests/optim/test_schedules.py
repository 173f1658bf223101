"""Schedules against transformers' and torch's schedulers and their closed forms."""
import math

import pytest
import torch

from deepnotes.optim import AdamW
from deepnotes.optim.schedules import (SCHEDULES, constant, cosine_restarts, get_schedule, lambda_lr, linear_warmup,
                                       set_lr, warmup_cosine)


def lrs_of(scheduler_factory, steps, base_lr=1.0):
    """The lr a torch scheduler gives at steps 0..steps-1 (read before each optimizer step)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = scheduler_factory(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("warmup, total", [(0, 50), (10, 100), (7, 8), (5, 5)])
def test_warmup_cosine_equals_transformers(warmup, total):
    from transformers.optimization import get_cosine_schedule_with_warmup

    want = lrs_of(lambda o: get_cosine_schedule_with_warmup(o, warmup, total), total + 1)
    got = [warmup_cosine(t, warmup_steps=warmup, total_steps=total) for t in range(total + 1)]
    assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("min_ratio", [0.1, 0.5])
def test_warmup_cosine_with_a_floor_equals_transformers_min_lr(min_ratio):
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    want = lrs_of(lambda o: get_cosine_with_min_lr_schedule_with_warmup(o, 10, 60, min_lr_rate=min_ratio), 61)
    got = [warmup_cosine(t, warmup_steps=10, total_steps=60, min_ratio=min_ratio) for t in range(61)]
    assert got == pytest.approx(want, abs=1e-12)


def test_constant_with_warmup_equals_transformers():
    from transformers.optimization import get_constant_schedule_with_warmup

    want = lrs_of(lambda o: get_constant_schedule_with_warmup(o, 8), 30)
    assert [constant(t, warmup_steps=8) for t in range(30)] == pytest.approx(want, abs=1e-15)
    assert all(constant(t) == 1.0 for t in range(5))


@pytest.mark.parametrize("T_0, T_mult, min_ratio", [(10, 1, 0.0), (5, 2, 0.1), (3, 3, 0.0), (1, 2, 0.2)])
def test_cosine_restarts_equals_torch_sgdr(T_0, T_mult, min_ratio):
    base = 0.5
    want = lrs_of(lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        o, T_0=T_0, T_mult=T_mult, eta_min=min_ratio * base), 150, base_lr=base)
    got = [base * cosine_restarts(t, T_0=T_0, T_mult=T_mult, min_ratio=min_ratio) for t in range(150)]
    assert got == pytest.approx(want, abs=1e-12)


def test_closed_form_landmarks():
    # cosine: 1 at the end of warm-up, the midpoint at half-way, the floor at and after the end.
    assert warmup_cosine(10, warmup_steps=10, total_steps=110) == 1.0
    assert warmup_cosine(60, warmup_steps=10, total_steps=110) == pytest.approx(0.5, abs=1e-15)
    assert warmup_cosine(110, warmup_steps=10, total_steps=110, min_ratio=0.1) == pytest.approx(0.1, abs=1e-15)
    assert warmup_cosine(500, warmup_steps=10, total_steps=110, min_ratio=0.1) == pytest.approx(0.1, abs=1e-15)
    decay = [warmup_cosine(t, warmup_steps=10, total_steps=110) for t in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert [linear_warmup(t, 4) for t in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    # SGDR restarts to 1 at 0, T_0, T_0 + T_0·T_mult, ... and only there.
    f = [cosine_restarts(t, T_0=4, T_mult=2) for t in range(30)]
    assert [t for t, v in enumerate(f) if v == 1.0] == [0, 4, 12, 28]
    # with warm-up the cycles start after it
    assert cosine_restarts(3, T_0=4, warmup_steps=3) == 1.0
    assert cosine_restarts(1, T_0=4, warmup_steps=3) == pytest.approx(1 / 3)
    assert cosine_restarts(5, T_0=4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_set_lr_is_a_function_of_the_step_so_it_resumes_exactly():
    schedule = get_schedule("cosine", warmup_steps=5, total_steps=40, min_ratio=0.05)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = AdamW([{"params": [p], "lr": 1e-3}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-2}])
    seen = []
    for step in range(40):
        seen.append(set_lr(opt, step, schedule))
    # a "resumed" optimizer set at step 23 directly gets the lr the long run had there
    fresh = AdamW([{"params": [p], "lr": 1e-3}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-2}])
    assert set_lr(fresh, 23, schedule) == seen[23]
    assert seen[23] == pytest.approx([1e-3 * schedule(23), 1e-2 * schedule(23)])


def test_lambda_lr_drives_our_optimizer_like_set_lr():
    schedule = get_schedule("sgdr", T_0=6, T_mult=2, min_ratio=0.1, warmup_steps=2)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = AdamW([p], lr=0.3)
    sched = lambda_lr(opt, schedule)
    for step in range(25):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.3 * schedule(step), abs=1e-15)
        p.grad = torch.ones(1)
        opt.step()
        sched.step()


def test_registry_and_bad_arguments():
    assert set(SCHEDULES) == {"constant", "cosine", "sgdr"}
    with pytest.raises(ValueError, match="name"):
        get_schedule("linear")
    with pytest.raises(TypeError):
        get_schedule("cosine", warmup_steps=5)  # total_steps missing: fails now, not mid-run
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(0, warmup_steps=20, total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(0, warmup_steps=0, total_steps=0)
    with pytest.raises(ValueError, match="step"):
        warmup_cosine(-1, warmup_steps=0, total_steps=10)
    with pytest.raises(ValueError, match="min_ratio"):
        warmup_cosine(0, warmup_steps=0, total_steps=10, min_ratio=1.5)
    with pytest.raises(ValueError, match="T_0"):
        cosine_restarts(0, T_0=0)
    with pytest.raises(ValueError, match="T_mult"):
        cosine_restarts(0, T_0=2, T_mult=0)
    with pytest.raises(TypeError, match="optimizer"):
        set_lr("adam", 0, constant)
