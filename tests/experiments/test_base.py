"""Checks and verdicts: computed from measurements, never written by hand."""
import math

import pytest

from deepnotes.experiments import NOTES, REGISTRY, Check, compute_verdict
from deepnotes.experiments.catalogue import NOTES_BY_SLUG


def test_check_compares_value_with_threshold():
    assert Check("x", 1.0, "<=", 1.0).passed
    assert not Check("x", 1.0, "<", 1.0).passed
    assert Check("x", 3.0, ">=", 2.0).passed
    assert not Check("x", 1.0, ">", 2.0).passed


def test_nan_never_passes():
    assert not Check("x", math.nan, "<=", 1.0).passed
    assert not Check("x", math.nan, ">=", 1.0).passed
    assert Check("x", math.nan, "<=", 1.0).to_json()["value"] is None


def test_unknown_operator_raises():
    with pytest.raises(ValueError, match="op"):
        Check("x", 1.0, "==", 1.0)


def test_verdict_from_checks():
    ok, bad = Check("a", 0, "<=", 1), Check("b", 2, "<=", 1)
    assert compute_verdict([ok, ok]) == "reproduced"
    assert compute_verdict([bad, bad]) == "not reproduced"
    assert compute_verdict([ok, bad]) == "partial"
    with pytest.raises(ValueError):
        compute_verdict([])


def test_catalogue_has_the_twelve_notes_in_order():
    assert [n.number for n in NOTES] == list(range(1, 13))
    assert len(NOTES_BY_SLUG) == 12
    assert "stochastic-approximation" in NOTES_BY_SLUG


def test_registry_entries_are_catalogued_experiments():
    for slug, exp in REGISTRY.items():
        assert slug in NOTES_BY_SLUG and exp.slug == slug
        assert exp.claim and exp.title and callable(exp.run)


def test_single_thread_restores_the_thread_count_even_on_error():
    import torch

    from deepnotes.experiments.base import single_thread

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with single_thread():
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before


def test_note_experiment_takes_title_and_claim_from_the_catalogue_and_can_run_single_threaded():
    import torch

    from deepnotes.experiments.base import NoteExperiment, Result

    class Probe(NoteExperiment):
        slug = "medusa"
        single_threaded = True

        def measure(self, ctx):
            return Result(metrics={"threads": torch.get_num_threads()},
                          checks=[Check("one thread", torch.get_num_threads(), "<=", 1)])

    before = torch.get_num_threads()
    assert Probe.title == NOTES_BY_SLUG["medusa"].title and Probe.claim == NOTES_BY_SLUG["medusa"].claim
    assert Probe().run(None).verdict == "reproduced"
    assert torch.get_num_threads() == before


def test_the_quick_budgets_of_the_twelve_notes_fit_the_ten_minute_run():
    from deepnotes.experiments.catalogue import QUICK_BUDGET_SECONDS

    assert all(note.budget_seconds > 0 for note in NOTES)
    assert sum(note.budget_seconds for note in NOTES) <= QUICK_BUDGET_SECONDS == 600


def test_context_generator_is_seeded_from_the_run_seed_on_the_notes_device(tmp_path):
    import torch

    from deepnotes.experiments.base import Context

    ctx = Context(slug="medusa", scale="tiny", seed=7, device="cpu", out_dir=tmp_path)
    a, b = ctx.generator(1), ctx.generator(1)
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    assert a.device.type == "cpu" and ctx.pick(1, 2, tiny=0) == 0 and ctx.pick(1, 2) == 1
    with pytest.raises(ValueError, match="scale"):
        Context(slug="medusa", scale="huge", seed=0, device="cpu", out_dir=tmp_path)
