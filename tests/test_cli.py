"""The deepnotes command end to end: list, run, report, bench and its errors."""
import json
import subprocess
import sys

import pytest
import torch
from fake_experiments import DrawsFromGlobalRngs, Raises

from deepnotes import cli
from deepnotes.experiments import NOTES, REGISTRY
from deepnotes.report import load_results


@pytest.fixture(scope="module")
def sa_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = cli.main(["run", "stochastic-approximation", "--out", str(out), "--quiet"])
    return code, out


def test_list_shows_all_twelve_notes_with_status(capsys):
    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    lines = {note.slug: next(line for line in text.splitlines() if f" {note.slug} " in line) for note in NOTES}
    for slug, line in lines.items():
        assert ("implemented" in line) == (slug in REGISTRY) and ("not yet" in line) == (slug not in REGISTRY)


def test_run_stochastic_approximation_writes_results_report_and_figures(sa_run):
    code, out = sa_run
    assert code == 0
    doc = load_results(out)  # validates against the schema
    (note,) = doc["notes"]
    assert note["slug"] == "stochastic-approximation" and note["status"] == "ok"
    assert note["verdict"] in ("reproduced", "partial", "not reproduced")
    assert len(note["checks"]) >= 6 and note["thresholds"]
    assert len(note["figures"]) >= 4
    assert note["device"] == "cpu" and note["budget_seconds"] > 0 and note["seeds"] >= 1
    for fig in note["figures"]:
        assert (out / fig["path"]).stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert note["verdict"] in html and "data:image/png;base64," in html
    assert note["checks"][0]["label"] and note["checks"][0]["label"] in html  # named key numbers
    assert "<link" not in html and "<script src" not in html  # self-contained
    assert doc["environment"]["torch"] == torch.__version__


def test_report_rebuilds_html_from_results(sa_run, capsys):
    _, out = sa_run
    before = (out / "report.html").read_text()
    (out / "report.html").unlink()
    assert cli.main(["report", str(out)]) == 0
    assert (out / "report.html").read_text() == before


def test_report_on_missing_folder_exits_2(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_unknown_note_exits_2_with_valid_slugs_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "deepnotes.cli", "run", "no-such-note", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no-such-note" in proc.stderr and "stochastic-approximation" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "results.json").exists()


def test_not_implemented_note_is_listed_not_faked(tmp_path, monkeypatch):
    monkeypatch.delitem(REGISTRY, "medusa", raising=False)
    assert cli.main(["run", "medusa", "--out", str(tmp_path), "--quiet"]) == 0
    (note,) = load_results(tmp_path)["notes"]
    assert note["status"] == "not implemented" and note["verdict"] == "not implemented"
    assert note["checks"] == [] and note["metrics"] == {}


def test_an_experiment_that_raises_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, "adamw", Raises())
    monkeypatch.setitem(REGISTRY, "medusa", DrawsFromGlobalRngs())
    assert cli.main(["run", "adamw", "medusa", "--out", str(tmp_path), "--quiet"]) == 1
    notes = {n["slug"]: n for n in load_results(tmp_path)["notes"]}
    assert notes["adamw"]["status"] == "error" and notes["adamw"]["verdict"] == "error"
    assert "boom in the middle" in notes["adamw"]["error"]
    assert notes["medusa"]["verdict"] == "reproduced"
    assert "boom in the middle" in (tmp_path / "report.html").read_text()


def test_same_seed_gives_same_metrics_and_another_seed_differs(tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, "medusa", DrawsFromGlobalRngs())
    values = []
    for i, seed in enumerate([3, 3, 4]):
        out = tmp_path / str(i)
        assert cli.main(["run", "medusa", "--out", str(out), "--seed", str(seed), "--quiet"]) == 0
        values.append(load_results(out)["notes"][0]["metrics"]["value"])
    assert values[0] == values[1] != values[2]


def test_cuda_without_a_gpu_is_a_usage_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli.main(["run", "stochastic-approximation", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device cuda" in capsys.readouterr().err


def test_bench_unknown_name_exits_2(capsys):
    assert cli.main(["bench", "no-such-bench"]) == 2
    assert "valid benchmarks" in capsys.readouterr().err


def test_bench_sa_quick_writes_json_with_ratios(tmp_path):
    assert cli.main(["bench", "sa", "--quick", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "sa.json").read_text())
    assert payload["benchmark"] == "sa"
    assert payload["speed_ratio_ours_over_peer"] > 0
    # Both are prefix means of values near 1000: float32 rounding, nothing worse.
    for method in ("running_mean", "cumsum_mean"):
        assert 0 <= payload["max_abs_error"][method] < 1e-2


def test_resume_into_another_out_folder_or_a_missing_one_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    assert cli.main(["run", "medusa", "--resume", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["run", "medusa", "--resume", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_cache_and_no_cache_exclude_each_other(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "medusa", "--cache", str(tmp_path), "--no-cache"])
    assert exit_info.value.code == 2


def test_resume_through_the_cli_keeps_finished_notes(tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, "medusa", DrawsFromGlobalRngs())
    monkeypatch.setitem(REGISTRY, "adamw", Raises())
    assert cli.main(["run", "medusa", "adamw", "--out", str(tmp_path), "--quiet", "--cache", str(tmp_path / "c")]) == 1
    first = load_results(tmp_path)["notes"][0]
    monkeypatch.setitem(REGISTRY, "medusa", Raises())  # would fail now: it must not run again
    monkeypatch.setitem(REGISTRY, "adamw", DrawsFromGlobalRngs())
    assert cli.main(["run", "medusa", "adamw", "--resume", str(tmp_path), "--quiet",
                     "--cache", str(tmp_path / "c")]) == 0
    notes = load_results(tmp_path)["notes"]
    assert notes[0] == first and notes[1]["status"] == "ok"


@pytest.mark.parametrize("make_out", [
    lambda tmp: (tmp / "file").write_text("x") and tmp / "file",            # --out names a file
    lambda tmp: (tmp / "file").write_text("x") and tmp / "file" / "sub",    # under a file
])
def test_an_unusable_out_folder_exits_2_before_any_work(tmp_path, capsys, monkeypatch, make_out):
    monkeypatch.setitem(REGISTRY, "adamw", Raises())  # would exit 1 if anything ran
    out = make_out(tmp_path)
    assert cli.main(["run", "adamw", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err and err.count("deepnotes run:") == 1


def test_report_errors_have_one_prefix(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("report:") == 1 and "no results.json" in err


def test_results_json_gets_the_umask_mode_not_a_private_one(sa_run):
    import os
    import stat

    _, out = sa_run
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "results.json").stat().st_mode) == 0o666 & ~umask


def test_the_environment_is_read_without_taking_the_users_git_lock(monkeypatch):
    import subprocess as sp

    from deepnotes.report import environment

    calls = []
    real = sp.run
    monkeypatch.setattr(environment.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real(cmd, **kw))
    environment.git_commit()
    assert calls and all("--no-optional-locks" in cmd for cmd in calls)
