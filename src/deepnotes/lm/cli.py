"""``deepnotes lm train|eval|generate``: the small code LM trained on the standard library.

    deepnotes lm train --out DIR [--scale tiny|quick|full] [--role base|draft] [--steps N] ...
    deepnotes lm eval DIR [--split test|validation] [--max-chars N]
    deepnotes lm generate DIR --prompt "def main(" --max-new-tokens 64 [--temperature 0.8 --seed 0]

``train`` writes one save_pretrained folder into DIR (config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json), so
``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)``
load it, plus ``deepnotes_lm.json`` (the recipe and the measured losses and perplexities),
``checkpoints/last.safetensors`` (running the same command again resumes there) and
``metrics.jsonl``. Each flag sets one field of LMTraining; unset ones take the scale's preset.
"""
from __future__ import annotations

from pathlib import Path

from ..usage import UsageError, writable_folder

__all__ = ["add_parser", "run"]

# Literal copies, so that building the parser imports no torch; a test holds them equal to model.py's.
SCALES = ("tiny", "quick", "full")
ROLES = ("base", "draft")
PRECISIONS = ("fp32", "bf16")
# LMTraining's fields with a flag of the same name; their default None means "the scale's preset".
TRAINING_FLAGS = {"vocab_size": int, "block_size": int, "steps": int, "batch_size": int, "lr": float, "warmup": int,
                  "min_ratio": float, "weight_decay": float, "beta2": float, "grad_clip": float, "train_chars": int,
                  "tokenizer_chars": int, "eval_chars": int, "seed": int}


def add_parser(sub) -> None:
    """Adds ``lm`` and its subcommands to the top-level subparsers ``sub``."""
    p = sub.add_parser("lm", help="a small code language model (transformers Llama) trained on the stdlib")
    cmds = p.add_subparsers(dest="lm_command", required=True)

    train = cmds.add_parser("train", help="learn the tokenizer and train the model (fit(), checkpoints)")
    train.add_argument("--out", type=Path, required=True, help="folder for the save_pretrained model")
    train.add_argument("--scale", choices=SCALES, default="quick")
    train.add_argument("--role", choices=ROLES, default="base", help="draft: the small assistant model")
    for name, kind in TRAINING_FLAGS.items():
        train.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                           help="LMTraining." + name + " (default: the scale's preset)")
    train.add_argument("--precision", choices=PRECISIONS, default=None, help="default: fp32 on cpu, bf16 on cuda")
    train.add_argument("--device", choices=["cpu", "cuda"], default="cpu")

    ev = cmds.add_parser("eval", help="perplexity on a held-out split of the standard library")
    ev.add_argument("model", type=Path, metavar="DIR", help="a folder written by `lm train`")
    ev.add_argument("--split", choices=["test", "validation"], default="test")
    ev.add_argument("--max-chars", type=int, default=None, help="score only this many characters of the split")
    ev.add_argument("--block-size", type=int, default=None, help="context per window (default: the training's)")

    gen = cmds.add_parser("generate", help="continue a prompt")
    gen.add_argument("model", type=Path, metavar="DIR")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0: greedy decoding")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")


def _device(name: str) -> str:
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available here; use --device cpu")
    return name


def _train(args, console) -> int:
    from .model import LMTraining, build_lm, save_lm, train_on_corpus

    out = writable_folder(args.out, "--out")
    device = _device(args.device)
    changes = {name: getattr(args, name) for name in TRAINING_FLAGS if getattr(args, name) is not None}
    changes["precision"] = args.precision or ("bf16" if device == "cuda" else "fp32")
    try:
        training = LMTraining.preset(args.scale, args.role, **changes)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    model = build_lm(training.config(), training.seed)
    console.print(f"training a {training.scale} {training.role} LM ({sum(p.numel() for p in model.parameters()):,} "
                  f"parameters) for {training.steps} steps on {device}")
    try:
        tokenizer, info = train_on_corpus(model, training, device=device, progress=None,
                                          checkpoint_dir=out / "checkpoints", metrics_path=out / "metrics.jsonl")
    except ValueError as err:  # too little text for one batch of windows: a setting the user chose
        raise UsageError(str(err)) from None
    save_lm(out, model.cpu(), tokenizer, info)
    console.print(f"final loss {info['final_loss']:.3f}; validation perplexity {info['val_perplexity']:.2f}; "
                  f"test perplexity {info['test_perplexity']:.2f}; {info['seconds']:.1f} s\nmodel: {out}")
    return 0


def _load(folder: Path):
    from .model import load_lm

    if not folder.is_dir():
        raise UsageError(f"DIR {folder}: no such folder")
    try:
        return load_lm(folder)
    except (FileNotFoundError, OSError, ValueError) as err:
        raise UsageError(f"DIR {folder}: {err}") from None


def _eval(args, console) -> int:
    from .model import perplexity
    from .splits import code_documents
    from .tokenizer import encode_documents

    if args.max_chars is not None and args.max_chars < 1:
        raise UsageError(f"--max-chars must be positive, got {args.max_chars}")
    if args.block_size is not None and args.block_size < 1:
        raise UsageError(f"--block-size must be positive, got {args.block_size}")
    model, tokenizer, info = _load(args.model)
    block = args.block_size or info.get("training", {}).get("block_size", 256)
    ids = encode_documents(tokenizer, code_documents(args.split, args.max_chars))
    if ids.numel() < 2:
        raise UsageError(f"--max-chars {args.max_chars}: too little text to score")
    ppl = perplexity(model, ids, block)
    console.print(f"{args.split} perplexity {ppl:.3f} over {ids.numel() - 1:,} tokens (context {block})")
    return 0


def _generate(args, console) -> int:
    import torch

    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not args.prompt:
        raise UsageError("--prompt must not be empty")
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    model, tokenizer, _ = _load(args.model)
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids  # (1, S)
    options = dict(do_sample=False)
    if args.temperature > 0:
        torch.manual_seed(args.seed)  # generate() samples from torch's global generator
        options = dict(do_sample=True, temperature=args.temperature, top_k=0, top_p=1.0)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, **options)
    console.print(tokenizer.decode(out[0], skip_special_tokens=False), markup=False, highlight=False)
    return 0


def run(args, console) -> int:
    return {"train": _train, "eval": _eval, "generate": _generate}[args.lm_command](args, console)
