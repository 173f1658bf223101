"""The runner: one process per note, a crash recorded with its cause, results on disk after every note,
--resume, the device each note ran on, and trained models shared through the artifact store."""
import json
import subprocess
import sys

import pytest
from fake_experiments import (CountsFinishedNotes, DrawsFromGlobalRngs, KilledByOOM, Raises, RunsOnRequestedDevice,
                              Segfaults, TrainsThroughTheStore)

from deepnotes.experiments.runner import ResumeError, note_device, run_notes
from deepnotes.report import load_results


def run(tmp_path, slugs, registry, **kw):
    kw.setdefault("cache_dir", tmp_path / "cache")
    return run_notes(slugs, registry=registry, out_dir=tmp_path / "run", **kw)


def test_a_note_that_raises_segfaults_or_is_killed_is_an_error_with_its_cause_and_the_run_goes_on(tmp_path):
    registry = {"adamw": Raises(), "smld": Segfaults(), "sde-intro": KilledByOOM(), "medusa": DrawsFromGlobalRngs()}
    doc = run(tmp_path, ["adamw", "smld", "sde-intro", "medusa"], registry)
    notes = {n["slug"]: n for n in doc["notes"]}
    assert [notes[s]["status"] for s in ("adamw", "smld", "sde-intro")] == ["error"] * 3
    assert "boom in the middle" in notes["adamw"]["error"]
    assert "SIGSEGV" in notes["smld"]["error"]
    assert "SIGKILL" in notes["sde-intro"]["error"] and "out-of-memory" in notes["sde-intro"]["error"]
    assert notes["medusa"]["verdict"] == "reproduced" and notes["medusa"]["seeds"] == 1
    assert load_results(tmp_path / "run") == json.loads(json.dumps(doc))  # the final document is on disk


def test_results_and_report_are_on_disk_after_every_note(tmp_path):
    registry = {"medusa": DrawsFromGlobalRngs(), "adamw": Raises(), "two-stream": CountsFinishedNotes()}
    doc = run(tmp_path, ["medusa", "adamw", "two-stream"], registry)
    counted = next(n for n in doc["notes"] if n["slug"] == "two-stream")["metrics"]["notes_on_disk"]
    assert counted == 2
    assert (tmp_path / "run" / "report.html").is_file()


def test_resume_keeps_finished_notes_and_reruns_the_rest(tmp_path):
    first = run(tmp_path, ["medusa", "adamw"], {"medusa": DrawsFromGlobalRngs(), "adamw": Raises()})
    # Second pass: medusa would now fail and adamw would now succeed.
    second = run(tmp_path, ["medusa", "adamw"], {"medusa": Raises(), "adamw": DrawsFromGlobalRngs()}, resume=True)
    by_slug = {n["slug"]: n for n in second["notes"]}
    assert by_slug["medusa"] == first["notes"][0]  # kept as it was
    assert by_slug["adamw"]["status"] == "ok"  # the error was run again
    # Another seed finishes nothing of the earlier run: everything runs again.
    third = run(tmp_path, ["medusa"], {"medusa": Raises()}, resume=True, seed=1)
    assert third["notes"][0]["status"] == "error"


def test_resume_from_a_broken_results_file_says_so(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{not json")
    with pytest.raises(ResumeError, match="cannot resume"):
        run(tmp_path, ["medusa"], {"medusa": DrawsFromGlobalRngs()}, resume=True)


def test_each_note_records_the_device_it_ran_on(tmp_path):
    registry = {"score-sde": RunsOnRequestedDevice(), "medusa": DrawsFromGlobalRngs()}
    doc = run(tmp_path, ["score-sde", "medusa"], registry, device="cuda")
    notes = {n["slug"]: n for n in doc["notes"]}
    assert notes["score-sde"]["device"] == "cuda" and notes["score-sde"]["metrics"]["on_cuda"] == 1.0
    assert notes["medusa"]["device"] == "cpu"  # CPU-only note under --device cuda
    assert "CPU only" in (tmp_path / "run" / "report.html").read_text()
    assert note_device(DrawsFromGlobalRngs(), "cuda") == "cpu" and note_device(RunsOnRequestedDevice(), "cpu") == "cpu"


def test_trained_models_are_shared_across_runs_through_the_store_and_no_cache_retrains(tmp_path):
    registry = {"temporal-modeling": TrainsThroughTheStore()}
    metrics = []
    for i, use_cache in enumerate([True, True, False]):
        doc = run_notes(["temporal-modeling"], registry=registry, out_dir=tmp_path / f"run{i}",
                        cache_dir=tmp_path / "cache", use_cache=use_cache)
        metrics.append(doc["notes"][0]["metrics"])
    assert [m["trained_by_this_process"] for m in metrics] == [1.0, 0.0, 1.0]
    assert [m["loaded"] for m in metrics] == [0.0, 1.0, 0.0]
    assert all(m["weight"] == 2.0 for m in metrics)


def test_in_process_mode_gives_the_same_record(tmp_path):
    a = run_notes(["medusa"], registry={"medusa": DrawsFromGlobalRngs()}, out_dir=tmp_path / "a", seed=5)
    b = run_notes(["medusa"], registry={"medusa": DrawsFromGlobalRngs()}, out_dir=tmp_path / "b", seed=5,
                  isolate=False)
    assert a["notes"][0]["metrics"] == b["notes"][0]["metrics"]


HEAVY = ["transformers", "cv2", "av", "sklearn", "triton"]


@pytest.mark.parametrize("code", [
    "import deepnotes.experiments",
    "from deepnotes import cli; cli.main(['list'])",
    # the whole stochastic-approximation note, run here at tiny scale: its imports, not only the registry's
    "from pathlib import Path; import tempfile; from deepnotes.experiments import REGISTRY; "
    "from deepnotes.experiments.base import Context; "
    "REGISTRY['stochastic-approximation'].run(Context(slug='stochastic-approximation', scale='tiny', seed=0, "
    "device='cpu', out_dir=Path(tempfile.mkdtemp())))",
])
def test_light_imports(code):
    probe = f"{code}\nimport sys\nprint('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="
