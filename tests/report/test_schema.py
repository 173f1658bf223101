"""results.json schema: a valid document passes, each kind of breakage is caught."""
import copy
import json

import pytest

from deepnotes.report import SCHEMA_PATH, validate_results
from deepnotes.report.environment import collect_environment
from deepnotes.report.results import json_safe, load_results, write_results


def make_doc():
    return {
        "schema_version": 2,
        "created": "2026-12-01T00:00:00+00:00",
        "scale": "quick",
        "seed": 0,
        "device": "cpu",
        "seconds": 1.0,
        "environment": collect_environment("cpu", 0),
        "notes": [
            {
                "number": 5, "slug": "stochastic-approximation", "title": "SA", "claim": "c", "status": "ok",
                "verdict": "reproduced", "summary": "", "metrics": {"x": 1.0, "y": None},
                "checks": [{"name": "x small", "label": "x", "value": 1.0, "op": "<=", "threshold": 2.0,
                            "passed": True},
                           {"name": "a beats b", "label": "gain CI low", "value": 0.1, "op": ">", "threshold": 0.0,
                            "passed": True, "interval": {"mean": 0.3, "low": 0.1, "high": 0.5, "n": 3,
                                                         "level": 0.95, "statistic": "paired difference"}}],
                "thresholds": {"x small": {"op": "<=", "threshold": 2.0}},
                "figures": [{"name": "f", "path": "figures/stochastic-approximation-f.png", "caption": ""}],
                "tables": [{"title": "t", "columns": ["a"], "rows": [[1]]}],
                "seconds": 0.5, "budget_seconds": 15, "device": "cpu", "seeds": 3, "error": None,
                "docs": "docs/notes/05-stochastic-approximation.md",
            },
            {
                "number": 12, "slug": "medusa", "title": "Medusa", "claim": "c", "status": "not implemented",
                "verdict": "not implemented", "summary": "", "metrics": {}, "checks": [], "thresholds": {},
                "figures": [], "tables": [], "seconds": None, "budget_seconds": 75, "device": "cpu", "seeds": None,
                "error": None, "docs": "docs/notes/12-medusa.md",
            },
        ],
    }


def test_schema_file_is_json_schema():
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"].startswith("https://json-schema.org/")


def test_valid_document_passes():
    doc = make_doc()
    assert validate_results(doc) is None  # returns nothing, raises nothing
    assert doc == make_doc()  # and leaves the document as it was


@pytest.mark.parametrize("breakage, where", [
    (lambda d: d.pop("environment"), "environment"),
    (lambda d: d["environment"].pop("git_commit"), "git_commit"),
    (lambda d: d["notes"][0].update(verdict="great"), "verdict"),
    (lambda d: d["notes"][0].update(verdict="error"), "verdict"),  # ok status needs a real verdict
    (lambda d: d["notes"][0].update(checks=[]), "checks"),  # a verdict needs measurements
    (lambda d: d["notes"][0].update(status="error", verdict="error", error=None), "error"),
    (lambda d: d["notes"][0]["checks"][0].update(op="~"), "op"),
    (lambda d: d["notes"][0]["figures"][0].update(path="/etc/passwd"), "path"),
    (lambda d: d["notes"][0].update(number=13), "number"),
    (lambda d: d.update(scale="huge"), "scale"),
    (lambda d: d["notes"][0].pop("device"), "device"),
    (lambda d: d["notes"][0].update(device="tpu"), "device"),
    (lambda d: d["notes"][0].update(seeds=0), "seeds"),
    (lambda d: d["notes"][0].pop("budget_seconds"), "budget_seconds"),
    (lambda d: d["notes"][0]["checks"][1]["interval"].pop("n"), "interval"),
    (lambda d: d.update(schema_version=1), "schema_version"),
])
def test_broken_documents_are_rejected(breakage, where):
    doc = copy.deepcopy(make_doc())
    breakage(doc)
    with pytest.raises(ValueError, match="does not match the schema") as err:
        validate_results(doc)
    assert where in str(err.value)  # the error names the place that broke


def test_json_safe_turns_non_finite_into_null_and_scalars_into_numbers():
    import numpy as np
    import torch

    out = json_safe({"a": float("inf"), "b": np.float32(1.5), "c": torch.tensor(2.0), "d": [float("nan")]})
    assert out == {"a": None, "b": 1.5, "c": 2.0, "d": [None]}


def test_write_then_load_round_trips(tmp_path):
    doc = make_doc()
    doc["notes"][0]["metrics"]["inf"] = float("inf")
    write_results(doc, tmp_path)
    back = load_results(tmp_path)
    assert back["notes"][0]["metrics"]["inf"] is None
    assert back["notes"][1]["verdict"] == "not implemented"
    assert not list(tmp_path.glob(".results.*"))  # the temp file was renamed away


def test_load_rejects_corrupt_json(tmp_path):
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results(tmp_path)
