"""`deepnotes medusa train|generate|eval` end to end on a tiny LM folder, and its usage errors."""
import dataclasses
import json

import pytest
import torch

from deepnotes.cli import build_parser, main


def test_every_training_setting_has_a_flag_with_its_default():
    from deepnotes.medusa.train import MedusaTraining

    args = build_parser().parse_args(["medusa", "train", "lm", "--out", "x"])
    for f in dataclasses.fields(MedusaTraining):
        assert getattr(args, f.name) == getattr(MedusaTraining(), f.name), f.name


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    from deepnotes.lm.model import build_lm, lm_config, save_lm
    from deepnotes.lm.splits import code_corpus
    from deepnotes.lm.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("lm")
    tok = train_tokenizer([code_corpus("train", max_chars=20_000)], vocab_size=300)
    save_lm(folder, build_lm(lm_config("tiny", vocab_size=len(tok)), seed=0), tok)
    return folder


@pytest.fixture(scope="module")
def trained(lm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("medusa")
    code = main(["medusa", "train", str(lm_dir), "--out", str(out), "--heads", "2", "--steps", "3", "--batch-size",
                 "2", "--block-size", "16", "--warmup", "1", "--max-chars", "20000", "--val-sequences", "4"])
    assert code == 0
    return out


def test_train_writes_a_medusa_folder_that_transformers_also_loads(trained):
    from transformers import AutoModelForCausalLM

    meta = json.loads((trained / "medusa.json").read_text())
    assert meta["training"]["num_heads"] == 2 and meta["training"]["steps"] == 3
    assert len(meta["val"]["rank"]) == 2 and len(meta["val"]["top1"]) == 2
    assert (trained / "checkpoints" / "last.safetensors").is_file()
    assert json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    assert AutoModelForCausalLM.from_pretrained(trained) is not None  # the base, as a plain causal LM


def test_train_again_resumes_from_the_checkpoint(lm_dir, trained, capsys):
    code = main(["medusa", "train", str(lm_dir), "--out", str(trained), "--heads", "2", "--steps", "3",
                 "--batch-size", "2", "--block-size", "16", "--warmup", "1", "--max-chars", "20000",
                 "--val-sequences", "4"])
    assert code == 0
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]  # nothing rerun


@pytest.mark.parametrize("rule", ["greedy", "typical"])
def test_generate_prints_the_continuation_and_the_steps(trained, capsys, rule):
    assert main(["medusa", "generate", str(trained), "--prompt", "def main(", "--max-new-tokens", "6",
                 "--tree", "16", "--acceptance", rule]) == 0
    out = capsys.readouterr().out
    assert out.startswith("def main(") and "tokens per step" in out and f"tree of 16, {rule}" in out


def test_generate_greedy_equals_the_bases_greedy(trained, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(trained).eval()
    tok = AutoTokenizer.from_pretrained(trained)
    ids = torch.tensor([tok("import os\n", add_special_tokens=False)["input_ids"]])
    ref = base.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8)
    assert main(["medusa", "generate", str(trained), "--prompt", "import os\n", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(tok.decode(ref[0]))


def test_eval_reports_accuracy_and_accepted_length(trained, capsys):
    assert main(["medusa", "eval", str(trained), "--prompts", "2", "--prompt-tokens", "8", "--max-new-tokens", "6",
                 "--sequences", "2", "--max-chars", "20000"]) == 0
    out = capsys.readouterr().out
    assert "per-head accuracy" in out and "t+3" in out and "accepted tokens per step" in out


@pytest.mark.parametrize("argv, message", [
    (["medusa", "train", "{tmp}", "--out", "{tmp}/o"], "no config.json"),
    (["medusa", "train", "{lm}", "--out", "{tmp}/o", "--steps", "0"], "steps must be a positive int"),
    (["medusa", "train", "{lm}", "--out", "{tmp}/o", "--data", "{tmp}/missing.txt"], "--data"),
    (["medusa", "generate", "{tmp}", "--prompt", "x"], "no medusa.json"),
    (["medusa", "generate", "{trained}", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["medusa", "eval", "{trained}", "--prompts", "0"], "--prompts must be positive"),
])
def test_usage_errors_exit_2_with_the_commands_prefix(argv, message, tmp_path, lm_dir, trained, capsys):
    argv = [a.format(tmp=tmp_path, lm=lm_dir, trained=trained) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepnotes medusa:") and message in err


def test_a_tree_size_outside_the_choices_is_an_argparse_error(trained):
    with pytest.raises(SystemExit) as exc:
        main(["medusa", "generate", str(trained), "--prompt", "x", "--tree", "20"])
    assert exc.value.code == 2
