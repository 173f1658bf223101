"""Note 10's experiment: the tiny run's wiring, and its pure parts on made-up grids."""
import math
import pickle

import numpy as np
import pytest
import torch

from deepnotes.experiments import adamw
from deepnotes.experiments.adamw import (LR_CENTRAL, LR_RANGE, METHODS, WD_RANGE, make_optimizer, paper_wd_range,
                                         separability)
from deepnotes.experiments.base import Context
from deepnotes.optim import Adam, AdamW

FORMS = ("torch form", "paper form")


def test_tiny_run_has_all_methods_both_forms_and_intervals_over_the_tiny_seeds(run_tiny):
    result, ctx = run_tiny("adamw")
    tiny_seeds = 2
    for method in METHODS:
        for stat in ("best_error", "additive_r2", "best_wd_spread_decades"):
            assert f"{method}_{stat}" in result.metrics
    assert result.metrics["seeds"] == tiny_seeds
    labels = [c.label for c in result.checks]
    assert len(labels) == len(set(labels)) == 9
    assert {"Adam parity", "AdamW parity", "paper = torch λ/γ0"} <= set(labels)
    for form in FORMS:
        assert sum(form in label for label in labels) == 3, form
    decided = [c for c in result.checks if c.interval is not None]
    assert len(decided) == 6 and all(c.interval.n == tiny_seeds for c in decided)
    assert result.seeds == tiny_seeds
    for c in result.checks[:3]:  # parity: bit-exact on the for-loop, whatever the scale
        assert c.interval is None and c.value == 0.0 and c.passed
    assert [f.name for f in ctx.figures] == ["grids"]


def test_paper_range_gives_the_torch_forms_decay_at_the_central_lr():
    assert LR_CENTRAL == pytest.approx(math.sqrt(1e-3 * 1e-2)) == pytest.approx(3.1623e-3, rel=1e-4)
    low, high = WD_RANGE["adamw_paper"]
    assert (low, high) == pytest.approx((1e-3 * LR_CENTRAL, 1.0 * LR_CENTRAL))
    assert paper_wd_range((2.0, 4.0), 0.5) == (1.0, 2.0)
    # per-step decay η·λ_paper = γ_0·η·λ_torch at γ_0 = the central lr, for every η
    for lam_torch, lam_paper in zip(WD_RANGE["adamw_torch"], WD_RANGE["adamw_paper"]):
        assert 0.3 * lam_paper == pytest.approx(LR_CENTRAL * 0.3 * lam_torch)
    assert LR_RANGE == (1e-3, 1e-2) and WD_RANGE["adam_l2"] == (1e-5, 1e-2)


def test_make_optimizer_builds_each_method():
    params = [torch.nn.Parameter(torch.ones(2))]
    adam, torch_form, paper = (make_optimizer(m, params, 3e-3, 0.1) for m in METHODS)
    assert type(adam) is Adam and adam.param_groups[0]["decoupled_weight_decay"] is False
    assert isinstance(torch_form, AdamW) and "independent_weight_decay" not in torch_form.param_groups[0]
    assert paper.param_groups[0]["independent_weight_decay"] is True and paper.param_groups[0]["initial_lr"] == 3e-3
    with pytest.raises(ValueError, match="method"):
        make_optimizer("sgd", params, 1e-3, 0.0)


def test_run_grids_pairs_cells_by_seed_and_keeps_the_jobs_order(monkeypatch, tmp_path):
    calls = []

    def serial(fn, jobs, workers=None):
        calls.extend(jobs)
        # error code = method index, seed, lr row, wd column, so the reshape can be read back
        return [list(METHODS).index(m) * 1000 + (seed - 7) * 100 + int(np.argmin(abs(lrs - lr))) * 10 +
                int(np.argmin(abs(wds[m] - wd))) for m, lr, wd, _, _, _, seed in jobs]

    monkeypatch.setattr(adamw, "map_runs", serial)
    ctx = Context(slug="adamw", scale="tiny", seed=7, device="cpu", out_dir=tmp_path)
    lrs = np.geomspace(*LR_RANGE, 3)
    wds = {m: np.geomspace(*WD_RANGE[m], 2) for m in METHODS}
    grids = adamw.run_grids(ctx, data=None, lrs=lrs, wds=wds, epochs=1, n_seeds=2)
    # what goes to the worker processes survives pickling: the init generator keeps its state
    restored = pickle.loads(pickle.dumps((adamw.train_cell, calls[0])))
    assert restored[0] is adamw.train_cell and torch.equal(restored[1][5].get_state(), calls[0][5].get_state())
    for mi, m in enumerate(METHODS):
        assert grids[m].shape == (2, 3, 2)
        for k in range(2):
            assert (grids[m][k] == mi * 1000 + k * 100 + np.arange(3)[:, None] * 10 + np.arange(2)).all()
    # seed k: every cell of every method gets the same init generator (state) and data-order seed
    for k in range(2):
        mine = [job for job in calls if job[-1] == 7 + k]
        assert len(mine) == len(METHODS) * 3 * 2
        assert all(torch.equal(job[5].get_state(), ctx.generator(k).get_state()) for job in mine)


def made_up_grids(n_seeds=4, noise=0.002):
    """Adam + L2: best wd on the diagonal (lr and wd interact); AdamW: additive, best wd fixed."""
    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    adam = 0.05 + 0.02 * (i - j) ** 2
    additive = 0.03 + 0.01 * i + 0.02 * (j - 1) ** 2
    return {m: np.stack([g + noise * rng.standard_normal((3, 3)) for _ in range(n_seeds)])
            for m, g in (("adam_l2", adam), ("adamw_torch", additive), ("adamw_paper", additive))}


def test_separability_passes_on_a_separable_adamw_and_reports_paired_intervals():
    grids = made_up_grids()
    wds = {m: np.geomspace(*WD_RANGE[m], 3) for m in METHODS}
    metrics, checks, tables = separability(grids, wds, n_test=539)
    assert len(checks) == 6 and all(c.passed for c in checks), [(c.label, c.value) for c in checks]
    assert all(c.interval.n == 4 for c in checks)
    assert metrics["adamw_torch_additive_r2"] > 0.95 > metrics["adam_l2_additive_r2"]
    assert metrics["adam_l2_best_wd_spread_decades"] == pytest.approx(np.log10(wds["adam_l2"]).std())
    p = metrics["adam_l2_best_error"]
    assert metrics["best_error_margin"] == pytest.approx(2 * math.sqrt(p * (1 - p) / 539))
    assert [len(t.rows) for t in tables] == [3, 2, 3 * 4]


def test_separability_fails_where_adamw_is_worse_and_never_with_one_seed():
    grids = made_up_grids()
    swapped = {"adam_l2": grids["adamw_torch"], "adamw_torch": grids["adam_l2"] + 0.05,
               "adamw_paper": grids["adam_l2"] + 0.05}
    wds = {m: np.geomspace(*WD_RANGE[m], 3) for m in METHODS}
    _, checks, _ = separability(swapped, wds, n_test=539)
    assert not any(c.passed for c in checks)
    _, checks, _ = separability({m: g[:1] for m, g in grids.items()}, wds, n_test=539)
    assert not any(c.passed for c in checks)  # one seed: infinite intervals decide nothing
