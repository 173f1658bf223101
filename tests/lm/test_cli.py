"""`deepnotes lm train|eval|generate` end to end at tiny scale, and its usage errors."""
import dataclasses
import json

import pytest

from deepnotes.cli import build_parser, main
from deepnotes.lm import cli as lcli
from deepnotes.lm import model as lmodel
from deepnotes.lm.model import LMTraining


def test_the_parsers_choices_are_the_modules():
    assert lcli.SCALES == lmodel.SCALES and lcli.ROLES == lmodel.ROLES and lcli.PRECISIONS == lmodel.PRECISIONS


def test_every_training_setting_has_a_flag_defaulting_to_the_preset():
    args = build_parser().parse_args(["lm", "train", "--out", "x"])
    names = {f.name for f in dataclasses.fields(LMTraining)}
    assert set(lcli.TRAINING_FLAGS) | {"scale", "role", "precision"} == names
    assert all(getattr(args, name) is None for name in lcli.TRAINING_FLAGS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("lm")
    code = main(["lm", "train", "--out", str(out), "--scale", "tiny", "--steps", "6", "--warmup", "1",
                 "--train-chars", "20000", "--tokenizer-chars", "20000", "--eval-chars", "2000"])
    assert code == 0
    return out


def test_train_writes_a_save_pretrained_folder_with_its_record(trained):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (trained / name).is_file(), name
    info = json.loads((trained / lmodel.INFO_FILE).read_text())
    assert info["training"]["steps"] == 6 and info["training"]["scale"] == "tiny"
    assert info["training"]["vocab_size"] == LMTraining.preset("tiny").vocab_size  # unset flags: the preset
    assert info["test_perplexity"] > 1
    assert (trained / "checkpoints" / "last.safetensors").is_file()
    assert json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 6


def test_eval_prints_the_perplexity(trained, capsys):
    assert main(["lm", "eval", str(trained), "--max-chars", "3000"]) == 0
    out = capsys.readouterr().out
    assert "test perplexity" in out and "context 32" in out


def test_generate_continues_the_prompt(trained, capsys):
    assert main(["lm", "generate", str(trained), "--prompt", "import os\n", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("import os\n")
    assert main(["lm", "generate", str(trained), "--prompt", "x", "--max-new-tokens", "3", "--temperature",
                 "0.8", "--seed", "1"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["lm", "generate", "{model}", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["lm", "generate", "{model}", "--prompt", ""], "--prompt"),
    (["lm", "generate", "{empty}", "--prompt", "x"], "not a saved LM folder"),
    (["lm", "eval", "{empty}/missing"], "no such folder"),
    (["lm", "eval", "{model}", "--max-chars", "0"], "--max-chars"),
    (["lm", "train", "--out", "{empty}/o", "--scale", "tiny", "--steps", "0"], "steps"),
    (["lm", "train", "--out", "{empty}/o", "--scale", "tiny", "--steps", "4", "--warmup", "5"], "warmup"),
])
def test_usage_errors_exit_2_with_one_line(trained, tmp_path, capsys, argv, message):
    argv = [a.format(model=trained, empty=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepnotes lm:") and message in err and "Traceback" not in err
