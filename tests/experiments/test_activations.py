"""Note 4's experiment: the whole run at tiny scale (wiring, intervals, the artifact store), and its
parts where the math gives an answer without a model."""
import math
import operator

import pytest
import torch

from deepnotes.artifacts import ArtifactStore
from deepnotes.experiments import activations as E
from deepnotes.experiments.base import Context
from deepnotes.experiments.parallel import map_runs
from deepnotes.lm.tiny import CharLMTraining, TinyLMConfig

TINY_SEEDS = 2  # configs(tiny): every part over two seeds


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- the whole experiment ---------------------------------------------------------------------------

def test_tiny_run_is_wired_and_a_second_run_loads_the_same_models(run_tiny):
    first, ctx = run_tiny("activations")
    n_lm = len(E.LMConfig().activations) * TINY_SEEDS
    assert (ctx.artifacts.trained, ctx.artifacts.hits) == (n_lm, 0)

    labels = [c.label for c in first.checks]
    assert labels == ["sigmoid rho CI high", "ReLU rho CI low", "GELU rho CI low", "ReLU dead CI low",
                      "leaky dead CI high", "GELU dead CI high", "SwiGLU gain CI low", "GEGLU gain CI low"]
    for check in first.checks:  # every part of the claim is decided over seeds
        iv = check.interval
        assert iv is not None and iv.n == TINY_SEEDS and iv.level == 0.95
        assert iv.low <= iv.mean <= iv.high
        assert check.value == (iv.low if check.op == ">" else iv.high)
    for check in first.checks[-2:]:
        assert (check.op, check.threshold) == (">", 0.0) and check.interval.statistic.startswith("paired")
    assert first.seeds == TINY_SEEDS

    m = first.metrics
    for a in E.STACK_GAINS:
        assert m[f"grad_rate_{a}"] > 0 and m[f"grad_first_over_last_{a}"] > 0
    for a in E.DEAD_ACTS:
        assert 0.0 <= m[f"dead_fraction_{a}_lr0.5"] <= 1.0
    assert m["lm_params_relu"] == m["lm_params_swiglu"] == m["lm_params_geglu"]  # matched parameters
    for a in ("swiglu", "geglu"):  # the gain is the mean paired difference of the two means
        assert m[f"lm_gain_{a}_mean"] == pytest.approx(m["lm_val_loss_relu"] - m[f"lm_val_loss_{a}"])
    assert {f.name for f in ctx.figures} == {"functions", "gradient-flow", "dead-units", "lm"}
    lm_table = first.tables[-1]
    assert [row[0] for row in lm_table.rows] == sorted(E.LMConfig().activations, key=lambda a: m[f"lm_val_loss_{a}"])
    assert all(row[5] == TINY_SEEDS for row in lm_table.rows)

    second, ctx2 = run_tiny("activations")
    assert (ctx2.artifacts.trained, ctx2.artifacts.hits) == (0, n_lm)
    assert second.metrics == first.metrics and second.summary == first.summary
    assert [c.to_json() for c in second.checks] == [c.to_json() for c in first.checks]
    assert [t.rows for t in second.tables] == [t.rows for t in first.tables]


def test_scales_pick_at_least_three_paired_lm_seeds_beyond_tiny(tmp_path):
    for scale in ("quick", "full"):
        ctx = Context(slug="activations", scale=scale, seed=0, device="cpu", out_dir=tmp_path)
        flow, dead, lm = E.configs(ctx)
        assert lm.seeds >= 3 and dead.seeds >= 5 and flow.seeds >= 5
        assert lm.activations[0] == "relu" and set(E.GATED_CLAIMED) <= set(lm.activations)
        assert (4 * lm.d_model) % 3 == 0  # the gated 2/3 width is exact
        assert lm.train.min_ratio == 0.1 and lm.train.warmup == lm.train.steps // 10
    quick = E.configs(Context(slug="activations", scale="quick", seed=0, device="cpu", out_dir=tmp_path))
    full = E.configs(Context(slug="activations", scale="full", seed=0, device="cpu", out_dir=tmp_path))
    assert full[2].seeds > quick[2].seeds and full[1].seeds > quick[1].seeds


def test_run_plans_hands_each_plan_its_own_results_in_order():
    plans = [E.Plan([(operator.add, (1, 2)), (operator.add, (3, 4))], lambda out: E.Part({"s": out}, [])),
             E.Plan([(operator.mul, (2, 5))], lambda out: E.Part({"p": out}, []))]
    assert [p.metrics for p in E.run_plans(plans, workers=1)] == [{"s": [3, 7]}, {"p": [10]}]


# --- 1. gradient flow --------------------------------------------------------------------------------

def test_gradient_rate_of_a_geometric_sequence_is_its_ratio():
    for rho in (0.25, 1.0, 1.3):
        norms = 3.0 * rho ** torch.arange(9, -1, -1, dtype=torch.float64)  # n_l = c rho^(L-l)
        assert E.gradient_rate(norms) == pytest.approx(rho, rel=1e-12)


@pytest.mark.parametrize("act, max_slope", [("sigmoid", 0.25), ("tanh", 1.0), ("relu", 1.0)])
def test_backward_signal_shrinks_by_at_most_max_slope_times_the_spectral_norm(act, max_slope):
    # delta_l = f'(z_l) * (delta_{l+1} W_{l+1}) row by row, so |delta_l| <= max|f'| ||W_{l+1}||_2 |delta_{l+1}|.
    weights = E.random_stack(8, 32, E.STACK_GAINS[act], gen(1))
    _, delta = E.stack_gradients(act, weights, torch.randn(16, 32, generator=gen(2)),
                                 torch.randn(16, 32, generator=gen(3)))
    for layer in range(7):
        bound = max_slope * torch.linalg.matrix_norm(weights[layer + 1], ord=2) * delta[layer + 1]
        assert delta[layer] <= bound * (1 + 1e-5), layer


def test_sigmoid_stack_with_orthogonal_weights_loses_at_least_three_quarters_per_layer():
    # ||W||_2 = 1 for an orthogonal W: the bound is sigma' <= 1/4 itself.
    q = [torch.linalg.qr(torch.randn(32, 32, generator=gen(k)))[0] for k in range(10)]
    _, delta = E.stack_gradients("sigmoid", q, torch.randn(8, 32, generator=gen(20)),
                                 torch.randn(8, 32, generator=gen(21)))
    assert (delta[:-1] / delta[1:] <= 0.25 + 1e-6).all()
    assert E.gradient_rate(delta) <= 0.25 + 1e-6  # delta_1 (input side) over delta_L


def test_relu_is_positively_homogeneous_so_weight_gradients_scale_with_the_input():
    weights = E.random_stack(6, 16, math.sqrt(2), gen(4))
    x, r = torch.randn(8, 16, generator=gen(5)), torch.randn(8, 16, generator=gen(6))
    g1, d1 = E.stack_gradients("relu", weights, x, r)
    g3, d3 = E.stack_gradients("relu", weights, 3.0 * x, r)
    torch.testing.assert_close(g3, 3.0 * g1)  # dL/dW_l = delta_l^T h_{l-1}, h scales, delta does not
    torch.testing.assert_close(d3, d1)
    assert all(w.grad is None for w in weights)  # the caller's weights are left alone


# --- 2. dead units -----------------------------------------------------------------------------------

def test_dead_mask_is_no_slope_on_any_input():
    z = torch.tensor([[-1.0, -2.0, 0.5, -3.0],
                      [-0.5, 0.0, -1.0, -4.0]])
    assert E.dead_mask("relu", z).tolist() == [True, True, False, True]  # relu'(0) = 0
    assert not E.dead_mask("leaky_relu", z).any()  # slope 0.01 > 1e-3 everywhere
    assert E.dead_mask("gelu", torch.full((3, 2), -12.0)).all()  # GELU'(-12) ~ 1e-30: no gradient either
    assert E.dead_mask("gelu", torch.tensor([[float("nan"), 1.0]])).tolist() == [True, False]  # NaN slope: dead


def test_dead_units_run_is_a_function_of_its_seed():
    x, y = torch.randn(40, 8, generator=gen(7)), torch.arange(40) % 3
    cfg = E.DeadConfig(steps=3, width=8)
    a, b = E.dead_units_run("relu", 0.5, cfg, x, y, 11), E.dead_units_run("relu", 0.5, cfg, x, y, 11)
    assert a == b and 0.0 <= a[0] <= 1.0 and 0.0 <= a[1] <= 1.0


# --- 3. the LM comparison ----------------------------------------------------------------------------

def test_lm_runs_in_worker_processes_equal_runs_here_and_their_store_counts_are_merged(tmp_path):
    cfg = TinyLMConfig(vocab=11, d_model=12, n_layer=1, n_head=3, block=8)
    training = CharLMTraining(steps=2, batch=2, block=8, warmup=1, eval_every=1, val_batches=1)
    stream = torch.arange(600) % 11
    jobs = [(ArtifactStore(tmp_path / "a"), cfg, training, s, stream, stream[:100]) for s in (0, 1)]
    here = map_runs(E.lm_run, jobs, workers=1)
    store = ArtifactStore(tmp_path / "a")
    before = store.counts()
    pool = map_runs(E.lm_run, [(store, *job[1:]) for job in jobs], workers=2)
    assert [r["loaded"] for r in here] == [False, False] and [r["loaded"] for r in pool] == [True, True]
    assert [r["val_loss"] for r in here] == [r["val_loss"] for r in pool]
    assert (store.hits, store.trained) == before  # the workers counted on their copies
    store.add_counts(before, [r["loaded"] for r in pool])
    assert (store.hits, store.trained) == (2, 0)
