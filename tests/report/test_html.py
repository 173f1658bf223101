"""report.html as a reader meets it: named key numbers, device, seconds against budget, seeds, the
interval behind a check, and the docs page readable from the run folder."""
import copy
import importlib.util
from pathlib import Path

from deepnotes.report.html import key_numbers, render_report, seconds_vs_budget

spec = importlib.util.spec_from_file_location("schema_doc", Path(__file__).with_name("test_schema.py"))
schema_doc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(schema_doc)


def test_key_numbers_name_each_check_and_mark_seeded_ones():
    note = schema_doc.make_doc()["notes"][0]
    assert key_numbers(note) == "x: 1 <= 2; gain CI low: 0.1 > 0 (n=3)"


def test_seconds_are_shown_against_the_quick_budget_only_at_quick_scale():
    note = {"seconds": 12.5, "budget_seconds": 15}
    assert seconds_vs_budget(note, "quick") == "12.5 / 15"
    assert seconds_vs_budget(note, "full") == "12.5"
    assert seconds_vs_budget({"seconds": None, "budget_seconds": 15}, "quick") == "—"


def test_report_shows_device_budget_seeds_interval_and_embeds_the_docs_page(tmp_path):
    doc = copy.deepcopy(schema_doc.make_doc())
    doc["device"] = "cuda"  # asked for; the note below ran on the CPU
    page = render_report(doc, tmp_path)
    assert "CPU only" in page and "0.5 / 15" in page and "3 seeds" in page
    assert "mean 0.3 [0.1, 0.5], n=3" in page
    # the docs page's text is in the report itself, so the link is not the only way to it
    assert "Notes page: docs/notes/05-stochastic-approximation.md" in page
    assert "Robbins" in page
    assert 'href="docs/' not in page  # no repository-relative link, dead from a run folder


def test_over_budget_is_flagged():
    doc = copy.deepcopy(schema_doc.make_doc())
    doc["notes"][0]["seconds"] = 20.0
    assert "over budget" in render_report(doc, Path("."))
