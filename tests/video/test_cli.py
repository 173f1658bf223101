"""`deepnotes video train|test|flow` end to end on .mp4 files written by OrderShapes, and usage errors."""
import dataclasses
import json

import pytest

from deepnotes.cli import build_parser, main
from deepnotes.video import cli as vcli
from deepnotes.video.synthetic import OrderShapes


def test_the_parsers_choices_are_the_modules():
    from deepnotes.video import models

    assert vcli.MODELS == models.MODELS and vcli.THREE_D == models.THREE_D


def test_every_training_setting_has_a_flag_with_its_default():
    from deepnotes.video.train import VideoTraining

    args = build_parser().parse_args(["video", "train", "--data", "x.txt", "--out", "o"])
    mapped = {"model": "model", "n_segments": "segments", "in_channels": None}
    for f in dataclasses.fields(VideoTraining):
        flag = mapped.get(f.name, f.name)
        if flag is not None:
            assert getattr(args, flag) == getattr(VideoTraining(), f.name), f.name


@pytest.fixture(scope="module")
def listing(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return OrderShapes(8, frames=4, size=16, seed=0).write_videos(folder)


@pytest.fixture(scope="module")
def trained(listing, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["video", "train", "--data", str(listing), "--root", str(listing.parent), "--model", "tsm",
                 "--segments", "4", "--size", "16", "--depth", "10", "--width", "4", "--steps", "2", "--batch-size",
                 "4", "--out", str(out)])
    assert code == 0
    return out


def test_train_writes_a_checkpoint_folder(trained):
    meta = json.loads((trained / "model.json").read_text())
    assert meta["model"] == "tsm" and meta["n_segments"] == 4 and len(meta["classes"]) == 8
    assert meta["classes"][:2] == ["class0", "class1"] and meta["size"] == 16 and meta["training"]["steps"] == 2
    assert (trained / "model.safetensors").is_file() and (trained / "checkpoints" / "last.safetensors").is_file()
    assert json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2


def test_test_reports_the_multi_view_accuracy(trained, listing, tmp_path, capsys):
    png = tmp_path / "confusion.png"
    assert main(["video", "test", str(trained), "--data", str(listing), "--root", str(listing.parent), "--clips", "2",
                 "--crops", "3", "--confusion", str(png)]) == 0
    out = capsys.readouterr().out
    assert "6 views each (2 clips x 3 crops, 'prob' averaging)" in out and "top-1" in out and "mean-class" in out
    assert png.stat().st_size > 1000


def test_flow_extracts_every_video_and_resumes(listing, tmp_path, capsys):
    out = tmp_path / "flow"
    assert main(["video", "flow", str(listing), str(out), "--root", str(listing.parent)]) == 0
    assert len(list(out.rglob("*.npz"))) == 8 and "8 computed, 0 already done" in capsys.readouterr().out
    assert main(["video", "flow", str(listing), str(out), "--root", str(listing.parent), "--method", "dis"]) == 0
    assert "0 computed, 8 already done" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "{tmp}/missing.txt", "--out", "{tmp}/a"], "missing.txt"),
    (["train", "--data", "{list}", "--segments", "0", "--out", "{tmp}/b"], "--segments must be positive"),
    (["train", "--data", "{tmp}", "--out", "{tmp}/c"], "classInd.txt"),
    (["train", "--data", "{list}", "--batch-size", "64", "--out", "{tmp}/d"], "fewer than --batch-size"),
    (["train", "--data", "{bad}", "--out", "{tmp}/e"], "line 1"),
    (["test", "{tmp}", "--data", "{list}"], "model.json"),
    (["flow", "{tmp}/none.txt", "{tmp}/f"], "no such file"),
])
def test_usage_errors_exit_2_with_one_line(argv, message, listing, tmp_path, capsys):
    (tmp_path / "bad.txt").write_text("clip.mp4 not-a-label\n")
    sub = {"{tmp}": str(tmp_path), "{list}": str(listing), "{bad}": str(tmp_path / "bad.txt")}
    for key, value in sub.items():
        argv = [a.replace(key, value) for a in argv]
    assert main(["video", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepnotes video: ") and message in err and "Traceback" not in err
