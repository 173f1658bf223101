"""A trained LM as one save_pretrained folder: model and tokenizer together, so every transformers
tool (AutoModelForCausalLM, AutoTokenizer, generate, assisted decoding, pipelines) loads it.

    save_lm(folder, model, tokenizer, info)      # config.json, model.safetensors, generation_config.json,
                                                 # tokenizer.json, tokenizer_config.json, deepnotes_lm.json
    model, tokenizer, info = load_lm(folder)
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from torch import nn

__all__ = ["INFO_FILE", "save_lm", "load_lm"]

INFO_FILE = "deepnotes_lm.json"  # the training record save_lm writes beside the save_pretrained files


@contextlib.contextmanager
def _no_progress_bars():
    """transformers' shard bars, off for one small file and back on after."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def save_lm(folder: str | os.PathLike, model, tokenizer, info: dict | None = None) -> Path:
    """One save_pretrained folder holding model and tokenizer (AutoModelForCausalLM and AutoTokenizer
    load it; generate() and assisted decoding run on it), plus INFO_FILE with `info`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _no_progress_bars():
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / INFO_FILE).write_text(json.dumps(info or {}, indent=1, sort_keys=True))
    return folder


def load_lm(folder: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, object, dict]:
    """(model in eval mode, tokenizer, info) from a save_lm folder; FileNotFoundError when it is not one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a saved LM folder: missing {', '.join(missing)}")
    with _no_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    info_path = folder / INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return model, tokenizer, info
