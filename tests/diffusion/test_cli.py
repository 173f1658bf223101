"""`deepnotes diffusion train|sample|nll` end to end on a toy set, and its usage errors."""
import json

import numpy as np
import pytest

from deepnotes.cli import main
from deepnotes.diffusion import cli as dcli


def test_the_parsers_choices_are_the_modules():
    from deepnotes.diffusion import samplers, train

    assert dcli.METHODS == samplers.METHODS
    assert tuple(sorted(train.SDES)) == dcli.SDE_NAMES
    assert dcli.OBJECTIVES == train.OBJECTIVES


def test_every_training_setting_has_a_flag():
    import dataclasses

    from deepnotes.cli import build_parser
    from deepnotes.diffusion.train import ScoreTraining

    args = build_parser().parse_args(["diffusion", "train", "--data", "digits", "--out", "x"])
    for f in dataclasses.fields(ScoreTraining):
        assert getattr(args, f.name) == getattr(ScoreTraining(), f.name), f.name  # same defaults


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    code = main(["diffusion", "train", "--data", "toy:8gaussians", "--n", "512", "--steps", "12", "--batch-size",
                 "64", "--warmup", "2", "--hidden", "16", "--depth", "1", "--out", str(out)])
    assert code == 0
    return out


def test_train_writes_a_model_that_rebuilds_without_the_command_line(trained):
    meta = json.loads((trained / "model.json").read_text())
    assert meta["sde"]["name"] == "vp" and meta["data_shape"] == [2] and meta["training"]["steps"] == 12
    assert (trained / "model.safetensors").is_file() and (trained / "samples.png").stat().st_size > 1000
    assert (trained / "checkpoints" / "last.safetensors").is_file()
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 12


def test_sample_writes_the_samples(trained, tmp_path):
    assert main(["diffusion", "sample", str(trained), "--method", "dpm_solver", "--steps", "5", "--n", "7",
                 "--out", str(tmp_path / "s.npy")]) == 0
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (7, 2) and np.isfinite(x).all()


def test_nll_reports_nats_and_bits_per_dim_with_the_levels_offset(trained, capsys):
    assert main(["diffusion", "nll", str(trained), "--data", "toy:8gaussians", "--n", "4", "--levels", "256"]) == 0
    out = capsys.readouterr().out
    assert "nats per example" in out and "offset log2(256) = 8.000" in out


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "toy:spiral", "--out", "{tmp}/a"], "unknown toy set"),
    (["train", "--data", "{tmp}/missing.npy", "--out", "{tmp}/b"], "missing.npy"),
    (["train", "--data", "pictures", "--out", "{tmp}/c"], "expected toy:NAME"),
    (["train", "--data", "toy:moons", "--n", "10", "--out", "{tmp}/d"], "fewer than --batch-size"),
    (["train", "--data", "toy:moons", "--steps", "0", "--out", "{tmp}/e"], "steps"),
    (["sample", "{tmp}", "--out", "{tmp}/x.npy"], "no model.json"),
])
def test_usage_errors_exit_2_with_one_line(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["diffusion", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepnotes diffusion: ") and message in err and "Traceback" not in err


def test_sample_rejects_an_unknown_file_type(trained, tmp_path, capsys):
    assert main(["diffusion", "sample", str(trained), "--out", str(tmp_path / "s.csv")]) == 2
    assert ".npy or .png" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["sample", "{model}", "--method", "pc", "--steps", "10", "--out", "{tmp}/s.npy"], "steps=10"),
    (["sample", "{model}", "--snr", "0", "--method", "pc", "--steps", "30", "--out", "{tmp}/s.npy"], "snr"),
    (["nll", "{model}", "--data", "toy:8gaussians", "--levels", "1"], "--levels"),
    (["nll", "{model}", "--data", "digits"], "shape"),
])
def test_bad_sampling_and_likelihood_arguments_are_usage_errors(argv, message, trained, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{model}", str(trained)) for a in argv]
    assert main(["diffusion", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepnotes diffusion: ") and message in err and "Traceback" not in err
