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
