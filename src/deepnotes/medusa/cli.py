"""``deepnotes medusa train|generate|eval``: Medusa heads on a user's causal LM.

    deepnotes medusa train LM_DIR --out DIR [--heads 4] [--steps 300] [--self-distill] [--medusa2] ...
    deepnotes medusa generate DIR --prompt "def main(" [--tree 16|32|64] [--acceptance greedy|typical]
    deepnotes medusa eval DIR [--prompts 8] [--max-new-tokens 64]

LM_DIR is any transformers causal-LM folder with its tokenizer (save_pretrained; ``deepnotes lm
train`` writes one). ``train`` writes into DIR the MedusaModel (base + heads, save_pretrained),
the tokenizer, ``medusa.json`` (the MedusaTraining fields, the LM folder, the measured per-head
accuracies that choose the tree), ``checkpoints/last.safetensors`` (running it again with the same
DIR resumes there) and ``metrics.jsonl``. The data is the standard library's code corpus (its
train split; validation for the accuracies) or ``--data FILE.txt`` (its last 5% validates).
Every training flag maps to one MedusaTraining field.
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from ..usage import UsageError, writable_folder

__all__ = ["add_parser", "run", "META_FILE", "TREE_SIZES"]

META_FILE = "medusa.json"
TREE_SIZES = (16, 32, 64)  # tree tokens, the root included


def add_parser(sub) -> None:
    """Adds ``medusa`` and its subcommands to the top-level subparsers ``sub``."""
    p = sub.add_parser("medusa", help="Medusa heads: faster greedy generation from your own causal LM")
    cmds = p.add_subparsers(dest="medusa_command", required=True)

    train = cmds.add_parser("train", help="train Medusa heads on a causal LM (fit(), checkpoints)")
    train.add_argument("lm", type=Path, metavar="LM_DIR", help="a transformers causal-LM folder with its tokenizer")
    train.add_argument("--out", type=Path, required=True, help="folder for the model, heads and checkpoints")
    train.add_argument("--data", default="stdlib", help="stdlib (the code corpus' train split) or FILE.txt")
    train.add_argument("--max-chars", type=int, default=2_000_000, help="characters of training text read")
    # MedusaTraining's fields, one flag each (defaults: MedusaTraining's own)
    train.add_argument("--heads", dest="num_heads", type=int, default=4)
    train.add_argument("--layers", dest="num_layers", type=int, default=1, help="ResBlocks per head")
    train.add_argument("--shared-projection", action="store_true",
                       help="heads feed the base's lm_head instead of owning a copy of it")
    train.add_argument("--medusa2", action="store_true", help="train base and heads jointly (default: Medusa-1)")
    train.add_argument("--steps", type=int, default=300)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--block-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--head-lr-multiplier", type=float, default=4.0, help="Medusa-2: heads' lr / base's lr")
    train.add_argument("--warmup", type=int, default=20)
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--grad-clip", type=float, default=1.0)
    train.add_argument("--decay", type=float, default=0.8, help="head k's loss weight decay^k")
    train.add_argument("--coefficient", type=float, default=0.2, help="Medusa-2: weight of the heads' losses")
    train.add_argument("--base-weight", type=float, default=1.0, help="Medusa-2: weight of the base's LM loss")
    train.add_argument("--self-distill", action="store_true",
                       help="train on the base's own greedy continuations of corpus prompts")
    train.add_argument("--distill-sequences", type=int, default=256)
    train.add_argument("--distill-prompt", type=int, default=16)
    train.add_argument("--val-sequences", type=int, default=32)
    train.add_argument("--seed", type=int, default=0)

    gen = cmds.add_parser("generate", help="generate with Medusa (tree verification)")
    gen.add_argument("model", type=Path, metavar="DIR", help="a folder written by `medusa train`")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--tree", type=int, choices=TREE_SIZES, default=32, help="tree tokens, the root included")
    gen.add_argument("--acceptance", choices=["greedy", "typical"], default="greedy")
    gen.add_argument("--temperature", type=float, default=0.0, help="typical acceptance's temperature")
    gen.add_argument("--posterior-threshold", type=float, default=0.09, help="typical: epsilon")
    gen.add_argument("--posterior-alpha", type=float, default=0.3, help="typical: delta")

    ev = cmds.add_parser("eval", help="per-head accuracy and accepted tokens per step on the test split")
    ev.add_argument("model", type=Path, metavar="DIR")
    ev.add_argument("--data", default="stdlib", help="stdlib (test split) or FILE.txt")
    ev.add_argument("--max-chars", type=int, default=500_000, help="characters of test text read")
    ev.add_argument("--prompts", type=int, default=8, help="prompts for the accepted length")
    ev.add_argument("--prompt-tokens", type=int, default=32)
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--sequences", type=int, default=32, help="test sequences for the accuracy")


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()  # no "Loading weights" bar on stderr: the command prints its own lines


def _load_lm(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer


    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder}: no config.json here; expected a transformers causal-LM folder "
                         "(save_pretrained, e.g. from `deepnotes lm train`)")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise UsageError(f"{folder}: cannot load a causal LM and its tokenizer: {err}") from None
    return model.eval(), tokenizer


def load_medusa(folder: Path):
    """(MedusaModel, tokenizer, meta) from a `medusa train` folder; a UsageError when it is not one."""
    from transformers import AutoTokenizer

    from .heads import MedusaModel

    if not (folder / META_FILE).is_file():
        raise UsageError(f"{folder}: no {META_FILE} here; train heads with `deepnotes medusa train`")
    meta = json.loads((folder / META_FILE).read_text())
    _quiet_transformers()
    model = MedusaModel.from_pretrained(folder)
    return model.eval(), AutoTokenizer.from_pretrained(folder), meta


def _text(spec: str, split: str, max_chars: int | None) -> str:
    if spec == "stdlib":
        from ..lm.splits import code_corpus

        return code_corpus(split, max_chars=max_chars)
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--data {spec}: expected 'stdlib' or a text file")
    text = path.read_text(encoding="utf-8", errors="replace")
    cut = int(len(text) * 0.95)
    part = text[:cut] if split == "train" else text[cut:]
    return part[:max_chars] if max_chars is not None else part


def _encode(tokenizer, text: str):
    import torch

    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def _train(args, console) -> int:

    from ..files import atomic_write
    from .heads import MedusaModel
    from .train import MedusaTraining, train_medusa

    out = writable_folder(args.out, "--out")
    if args.max_chars < 1:
        raise UsageError(f"--max-chars must be positive, got {args.max_chars}")
    try:
        cfg = MedusaTraining(**{f.name: getattr(args, f.name) for f in fields(MedusaTraining)})
    except ValueError as err:
        raise UsageError(str(err)) from None
    train_text = _text(args.data, "train", args.max_chars)
    val_text = _text(args.data, "validation", max(1, args.max_chars // 10))
    base, tokenizer = _load_lm(args.lm)
    train_ids, val_ids = _encode(tokenizer, train_text), _encode(tokenizer, val_text)
    need = cfg.batch_size * cfg.block_size
    if train_ids.numel() < need and not cfg.self_distill:
        raise UsageError(f"--data gives {train_ids.numel()} tokens, fewer than --batch-size x --block-size = {need}")
    model = MedusaModel(base, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
                        shared_projection=cfg.shared_projection)
    console.print(f"training {cfg.num_heads} Medusa heads ({'Medusa-2' if cfg.medusa2 else 'Medusa-1'}"
                  f"{', self-distilled' if cfg.self_distill else ''}) on {train_ids.numel():,} tokens "
                  f"for {cfg.steps} steps")
    try:
        info = train_medusa(model, train_ids, cfg, val_ids=val_ids, checkpoint_dir=out / "checkpoints",
                            metrics_path=out / "metrics.jsonl", progress=None)
    except ValueError as err:
        raise UsageError(str(err)) from None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {"training": cfg.to_dict(), "lm": str(args.lm), "data": args.data, "max_chars": args.max_chars,
            "final_loss": info["final_loss"], "val": info.get("val")}
    atomic_write(out / META_FILE, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
    val = info.get("val") or {}
    if val:
        console.print("validation top-1 per head: " + ", ".join(f"{a:.3f}" for a in val["top1"])
                      + "; top-5: " + ", ".join(f"{a:.3f}" for a in val["top5"]))
    console.print(f"final loss {info['final_loss']:.4f}; model and heads: {out}")
    return 0


def _choices(meta: dict, size: int, num_heads: int):
    import torch

    from .tree import grow_tree

    rank = (meta.get("val") or {}).get("rank")
    if rank is None:  # no measured accuracies: a prior that decays with depth and rank
        rank = [[0.6 * 0.7 ** k / (r + 1) for r in range(10)] for k in range(num_heads)]
    return grow_tree(torch.tensor(rank, dtype=torch.float64), size - 1)


def _generate(args, console) -> int:
    import torch

    from .decode import medusa_generate

    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    model, tokenizer, meta = load_medusa(args.model)
    ids = _encode(tokenizer, args.prompt).unsqueeze(0)
    if ids.numel() == 0:
        raise UsageError("--prompt is empty")
    choices = _choices(meta, args.tree, len(model.heads))
    try:
        with torch.no_grad():
            res = medusa_generate(model, ids, args.max_new_tokens, choices=choices, acceptance=args.acceptance,
                                  posterior_threshold=args.posterior_threshold, posterior_alpha=args.posterior_alpha,
                                  eos_token_id=tokenizer.eos_token_id, temperature=args.temperature)
    except ValueError as err:
        raise UsageError(str(err)) from None
    tokens = res.tokens.reshape(-1).tolist()
    console.print(args.prompt + tokenizer.decode(tokens), highlight=False, markup=False)
    console.print(f"[dim]{len(tokens)} tokens in {res.steps} verification steps: "
                  f"{len(tokens) / max(res.steps, 1):.2f} tokens per step (tree of {args.tree}, {args.acceptance})[/]")
    return 0


def _eval(args, console) -> int:
    import torch
    from rich.table import Table

    from .decode import medusa_generate
    from .train import head_accuracy, token_blocks

    for flag in ("prompts", "prompt_tokens", "max_new_tokens", "sequences", "max_chars"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    model, tokenizer, meta = load_medusa(args.model)
    block = meta["training"]["block_size"]
    test_ids = _encode(tokenizer, _text(args.data, "test", args.max_chars))
    try:
        acc = head_accuracy(model, token_blocks(test_ids, block, max_blocks=args.sequences))
    except ValueError as err:
        raise UsageError(f"--data: {err}") from None
    table = Table(title=f"per-head accuracy on the test split ({args.sequences} x {block} tokens)")
    for col in ("head", "predicts", "top-1", "top-5"):
        table.add_column(col, justify="right")
    for k, (a1, a5) in enumerate(zip(acc["top1"], acc["top5"])):
        table.add_row(str(k), f"t+{k + 2}", f"{a1:.3f}", f"{a5:.3f}")
    table.caption = f"base next-token top-1: {acc['base_top1']:.3f}"
    console.print(table)
    stride = max(1, (test_ids.numel() - args.prompt_tokens) // args.prompts)
    prompts = [test_ids[i * stride: i * stride + args.prompt_tokens].unsqueeze(0) for i in range(args.prompts)]
    acc_table = Table(title=f"accepted tokens per step (bonus token counted), {args.prompts} test prompts, "
                            f"{args.max_new_tokens} new tokens")
    for col in ("tree", "greedy", "typical"):
        acc_table.add_column(col, justify="right")
    for size in TREE_SIZES:
        choices = _choices(meta, size, len(model.heads))
        row = []
        for rule in ("greedy", "typical"):
            n_tok = n_steps = 0
            with torch.no_grad():
                for p in prompts:
                    res = medusa_generate(model, p, args.max_new_tokens, choices=choices, acceptance=rule)
                    n_tok += res.tokens.numel()
                    n_steps += res.steps
            row.append(f"{n_tok / max(n_steps, 1):.2f}")
        acc_table.add_row(str(size), *row)
    console.print(acc_table)
    return 0


def run(args, console) -> int:
    return {"train": _train, "generate": _generate, "eval": _eval}[args.medusa_command](args, console)
