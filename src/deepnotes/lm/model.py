r"""A small code LM: a transformers LlamaForCausalLM built here, so every transformers tool runs on it.

Each block is Llama's (Touvron et al. 2023), pre-norm with RMSNorm, rotary positions and a
SwiGLU MLP:

    x ← x + W_o · Attn(RoPE(W_q h), RoPE(W_k h), W_v h),   h = RMSNorm(x)
    x ← x + W_down (SiLU(W_gate h) ⊙ W_up h),              h = RMSNorm(x)
    logits = RMSNorm(x) Eᵀ                                  (output tied to the input embedding E)

so the parameters are

    N = V·d + L·(4d² + 3·d·d_ff + 2d) + d        (tied: E counted once; no biases)

Sizes (V = the scale's vocabulary; ``lm_param_count`` evaluates the formula from a config):

    scale   role    d    L  heads  d_ff   V      params
    tiny    base    32   2   4      64    320    30,880   (tests)
    tiny    draft   16   1   2      32    320     7,728
    quick   base   128   4   4     384   2048   1,115,264
    quick   draft   64   2   2     192   2048     237,888
    full    base   384   6   6    1024   4096  12,194,688
    full    draft  192   2   3     512   4096   1,672,128

Measured (test split; bits per character = the stream's −log₂ p over the characters it encodes,
comparable across vocabularies). Quick preset (BPE 2048 from 2M characters, 500 steps of 4 × 128
tokens, lr 2e-3, one thread): base test perplexity 188.5 (validation 212.7), 2.54 bits/char.
References on the validation text, fit on the same 2M training characters: unigram frequencies
e^6.37 ≈ 585, a bigram count table e^4.39 ≈ 81. Full preset (BPE 4096 from 4M characters, 1,500
steps of 8 × 256 tokens ≈ one epoch of the 3.1M-token train split, lr 1.5e-3; ~2.4 s per step on
one thread, about an hour): base test perplexity 75.2 (validation 30.8), 1.73 bits/char; its
1.7M draft 69.8 (30.6), 1.70 bits/char: after one epoch the larger model has not pulled ahead.
(The earlier full recipe, 500 steps of 4 × 256 tokens, left the base at test perplexity 314.)

The draft is the same recipe at a fraction of the size and with the same tokenizer:
transformers' assisted decoding (``generate(assistant_model=draft)``) needs both.
Special ids: <|bos|> 0, <|eos|> 1, <|pad|> 2 (deepnotes.lm.tokenizer).

Training (``train_lm``, on deepnotes.train.fit) minimises the next-token cross-entropy on
windows of the token stream, w = ids[k·T : k·T + T + 1] for k = 0, 1, ... (inputs w[:-1],
targets w[1:]; consecutive windows share one boundary token), shuffled by fit's seeded
sampler, with AdamW (β = (0.9, β₂), decoupled weight decay on matrices only), gradients
clipped, and γ_t = γ · warmup_cosine(t; T_w, T, r). ``perplexity`` is exp of the mean
cross-entropy over a held-out stream. ``trained_lm`` trains tokenizer and model once per
LMTraining recipe and keeps both in an ArtifactStore.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ..nn.init import rng_scope
from .pretrained import INFO_FILE, load_lm, save_lm

__all__ = ["SCALES", "ROLES", "ARCHITECTURES", "lm_config", "lm_param_count", "build_lm", "LMTraining",
           "PRESETS", "token_windows", "train_lm", "perplexity", "train_on_corpus", "trained_lm", "corpus_tokenizer",
           "save_lm", "load_lm", "INFO_FILE"]

SCALES = ("tiny", "quick", "full")
ROLES = ("base", "draft")
# (scale, role) -> (d = hidden_size, L = layers, attention heads, d_ff = intermediate_size)
ARCHITECTURES: dict[tuple[str, str], tuple[int, int, int, int]] = {
    ("tiny", "base"): (32, 2, 4, 64),
    ("tiny", "draft"): (16, 1, 2, 32),
    ("quick", "base"): (128, 4, 4, 384),
    ("quick", "draft"): (64, 2, 2, 192),
    ("full", "base"): (384, 6, 6, 1024),
    ("full", "draft"): (192, 2, 3, 512),
}
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2


def _check_choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def lm_config(scale: str = "quick", vocab_size: int = 2048, role: str = "base", max_position_embeddings: int = 2048):
    """The LlamaConfig of `scale` ("tiny" | "quick" | "full") and `role` ("base" | "draft").

    Rotary positions have no parameters, so max_position_embeddings only bounds the context;
    the model is trained on windows of LMTraining.block_size tokens.
    """
    from transformers import LlamaConfig

    d, n_layer, n_head, d_ff = ARCHITECTURES[(_check_choice(scale, "scale", SCALES),
                                              _check_choice(role, "role", ROLES))]
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= PAD_ID:
        raise ValueError(f"vocab_size must be an int > {PAD_ID} (the special ids 0, 1, 2), got {vocab_size!r}")
    if isinstance(max_position_embeddings, bool) or not isinstance(max_position_embeddings, int) \
            or max_position_embeddings < 1:
        raise ValueError(f"max_position_embeddings must be a positive int, got {max_position_embeddings!r}")
    return LlamaConfig(vocab_size=vocab_size, hidden_size=d, intermediate_size=d_ff, num_hidden_layers=n_layer,
                       num_attention_heads=n_head, num_key_value_heads=n_head,
                       max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-5, initializer_range=0.02,
                       tie_word_embeddings=True, attention_bias=False, mlp_bias=False, bos_token_id=BOS_ID,
                       eos_token_id=EOS_ID, pad_token_id=PAD_ID)


def lm_param_count(config) -> int:
    """N from the config, without building the model (module docstring; grouped-query k/v included)."""
    d, V, L, d_ff = config.hidden_size, config.vocab_size, config.num_hidden_layers, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q_out = config.num_attention_heads * head_dim
    kv_out = config.num_key_value_heads * head_dim
    attention = d * q_out + 2 * d * kv_out + q_out * d  # W_q, W_k, W_v, W_o
    block = attention + 3 * d * d_ff + 2 * d  # + SwiGLU's gate, up, down + two RMSNorm weights
    embeddings = V * d * (1 if config.tie_word_embeddings else 2)
    return embeddings + L * block + d


def build_lm(config, seed: int = 0):
    """A LlamaForCausalLM of `config` with transformers' init (N(0, 0.02²) matrices, unit norms),
    drawn from a generator seeded with `seed`; torch's global generator is left as it was."""
    from transformers import LlamaForCausalLM

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    with rng_scope(torch.Generator().manual_seed(seed)):
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    return model


# Per-scale changes to LMTraining's defaults (which are the quick recipe).
PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=320, block_size=32, steps=40, batch_size=8, lr=1e-2, warmup=4, train_chars=60_000,
                 tokenizer_chars=60_000, eval_chars=8_000),
    "quick": {},
    # about one epoch of the whole train split (3.1M tokens of this BPE): 1,500 steps of 8 × 256 tokens
    "full": dict(vocab_size=4096, block_size=256, steps=1500, batch_size=8, lr=1.5e-3, warmup=60, train_chars=None,
                 tokenizer_chars=4_000_000, eval_chars=None),
}
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class LMTraining:
    """The recipe of a trained code LM: corpus, tokenizer, architecture and optimisation."""

    scale: str = "quick"  # architecture: lm_config(scale, vocab_size, role)
    role: str = "base"  # "base" | "draft" (the smaller model for assisted decoding)
    vocab_size: int = 2048  # BPE vocabulary, also the model's
    block_size: int = 128  # T: tokens per training window
    steps: int = 500  # optimizer steps
    batch_size: int = 4  # windows per step
    lr: float = 2e-3  # peak learning rate γ
    warmup: int = 25  # T_w: linear warm-up steps
    min_ratio: float = 0.1  # r: the cosine ends at r·γ
    weight_decay: float = 0.1  # AdamW's λ, on matrices only
    beta2: float = 0.95  # AdamW's β₂ (β₁ = 0.9)
    grad_clip: float = 1.0  # max global gradient norm
    train_chars: int | None = 2_000_000  # characters of the train split tokenized for training (None: all)
    tokenizer_chars: int = 2_000_000  # characters of the train split the BPE is learned from
    eval_chars: int | None = 150_000  # characters of the validation/test splits scored (None: all)
    seed: int = 0  # initial weights and data order (the file split is fixed: splits' seed 0)
    precision: str = "fp32"  # "fp32" (CPU) | "bf16" (autocast, CUDA)

    def __post_init__(self) -> None:
        _check_choice(self.scale, "scale", SCALES)
        _check_choice(self.role, "role", ROLES)
        _check_choice(self.precision, "precision", PRECISIONS)
        for name in ("vocab_size", "block_size", "steps", "batch_size", "tokenizer_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("train_chars", "eval_chars"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or not 0 <= self.warmup <= self.steps:
            raise ValueError(f"warmup must be an int in [0, steps={self.steps}], got {self.warmup!r}")
        if not self.lr > 0 or not self.grad_clip > 0 or not 0 <= self.min_ratio <= 1 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0, grad_clip > 0, 0 <= min_ratio <= 1 and weight_decay >= 0, got lr={self.lr},"
                             f" grad_clip={self.grad_clip}, min_ratio={self.min_ratio}, "
                             f"weight_decay={self.weight_decay}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {type(self.seed).__name__}")

    @classmethod
    def preset(cls, scale: str = "quick", role: str = "base", **changes) -> "LMTraining":
        """The recipe of `scale` (PRESETS) for `role`, with `changes` to any field."""
        return cls(**{**PRESETS[_check_choice(scale, "scale", SCALES)], "scale": scale, "role": role, **changes})

    def config(self, max_position_embeddings: int = 2048):
        return lm_config(self.scale, self.vocab_size, self.role, max_position_embeddings)

    def to_dict(self) -> dict:
        return asdict(self)


def token_windows(token_ids: torch.Tensor, block_size: int) -> TensorDataset:
    """Windows ids[k·T : k·T + T + 1], k = 0 .. ⌊(n−1)/T⌋ − 1, as a TensorDataset of (N, T + 1) int64."""
    if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 1 or token_ids.dtype != torch.long:
        got = f"{token_ids.dtype} {tuple(token_ids.shape)}" if isinstance(token_ids, torch.Tensor) else type(token_ids)
        raise TypeError(f"token_ids must be a 1-D int64 tensor, got {got}")
    if token_ids.numel() < block_size + 1:
        raise ValueError(f"token_ids has {token_ids.numel()} tokens: fewer than one window of block_size + 1 = "
                         f"{block_size + 1}")
    n = (token_ids.numel() - 1) // block_size
    windows = token_ids[: n * block_size + 1].unfold(0, block_size + 1, block_size)  # (N, T + 1), a view
    return TensorDataset(windows.contiguous())


def _next_token_loss(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean CE of windows[:, 1:] given windows[:, :-1]: (B, T + 1) -> scalar."""
    logits = model(input_ids=windows[:, :-1], use_cache=False).logits  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten())


@torch.no_grad()
def _nll_sum(model: nn.Module, token_ids: torch.Tensor, block_size: int, batch_size: int) -> tuple[float, int]:
    """(Σ −log p(x_i | the window's earlier tokens), number of predicted tokens) over consecutive windows."""
    device = next(model.parameters()).device
    n_full = (token_ids.numel() - 1) // block_size
    total, count = 0.0, 0
    full = token_ids[: n_full * block_size + 1].unfold(0, block_size + 1, block_size) if n_full else None
    chunks = [] if full is None else list(full.split(batch_size))
    tail = token_ids[n_full * block_size:]
    if tail.numel() >= 2:
        chunks.append(tail[None])  # the last, shorter window
    for w in chunks:
        w = w.to(device)
        logits = model(input_ids=w[:, :-1], use_cache=False).logits.float()  # (B, t, V)
        total += float(F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum"))
        count += w[:, 1:].numel()
    return total, count


def perplexity(model: nn.Module, token_ids: torch.Tensor, block_size: int, batch_size: int = 16) -> float:
    """exp((1/N) Σᵢ −log p(xᵢ | x_{<i})) over token_ids (n,), cut into consecutive windows of
    block_size + 1 tokens (each token after the first predicted once, from at most block_size
    tokens of context: the last window may be shorter). The model's mode is restored."""
    if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 1 or token_ids.numel() < 2:
        raise ValueError(f"token_ids must be a 1-D tensor of at least 2 tokens, got "
                         f"{tuple(token_ids.shape) if isinstance(token_ids, torch.Tensor) else type(token_ids)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    was_training = model.training
    model.eval()
    try:
        total, count = _nll_sum(model, token_ids.long(), block_size, batch_size)
    finally:
        model.train(was_training)
    return math.exp(total / count)


def _weight_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]  # RMSNorm gains: no decay
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train_lm(model: nn.Module, token_ids: torch.Tensor, training: LMTraining, val_ids: torch.Tensor | None = None,
             checkpoint_dir: str | os.PathLike | None = None, *, metrics_path: str | os.PathLike | None = None,
             progress: bool | None = False, device: str = "cpu", stop_after: int | None = None) -> dict:
    """Trains `model` in place on windows of `token_ids` (n,) with deepnotes.train.fit.

    fit's sampler, seeded with training.seed, orders the windows; with `checkpoint_dir` a call
    resumes where the last one stopped and ends with the weights of an uninterrupted run.
    `stop_after` ends the call after that many steps of the run (its schedule still spans
    training.steps). With `val_ids`, the loss on up to 16 validation windows is logged five
    times. Returns JSON-able {"final_loss" (mean of the last 10% of steps), "loss_curve",
    "val_loss", "val_perplexity" (all of val_ids), "steps", "tokens", "seconds"}.
    """
    from ..optim import AdamW
    from ..optim.schedules import get_schedule
    from ..train import fit

    data = token_windows(token_ids, training.block_size)
    if len(data) < training.batch_size:
        raise ValueError(f"token_ids gives {len(data)} windows of {training.block_size} tokens: fewer than "
                         f"batch_size={training.batch_size}")
    vocab = model.get_input_embeddings().num_embeddings
    if int(token_ids.max()) >= vocab or int(token_ids.min()) < 0:
        raise ValueError(f"token_ids must lie in [0, {vocab}) (the model's vocabulary), got "
                         f"[{int(token_ids.min())}, {int(token_ids.max())}]")
    model.to(device)
    opt = AdamW(_weight_groups(model, training.weight_decay), lr=training.lr, betas=(0.9, training.beta2))
    schedule = get_schedule("cosine", warmup_steps=training.warmup, total_steps=training.steps,
                            min_ratio=training.min_ratio)
    probe = token_windows(val_ids, training.block_size).tensors[0][:16] if val_ids is not None else None

    def eval_fn(m):
        return {"val_loss": _next_token_loss(m, probe.to(device)).item()}

    t0 = time.perf_counter()
    result = fit(model, opt, data, lambda m, batch: _next_token_loss(m, batch[0]), schedule=schedule,
                 eval_fn=eval_fn if probe is not None else None, eval_every=math.ceil(training.steps / 5),
                 max_steps=min(stop_after or training.steps, training.steps), batch_size=training.batch_size,
                 grad_clip=training.grad_clip, precision=training.precision, seed=training.seed, device=device,
                 checkpoint_dir=checkpoint_dir, checkpoint_every=max(1, training.steps // 10),
                 metrics_path=metrics_path, progress=progress,
                 log_every=max(1, training.steps // 20))
    seconds = time.perf_counter() - t0
    losses = result.losses
    window = max(1, math.ceil(0.1 * len(losses)))
    info = {"final_loss": sum(losses[-window:]) / window if losses else float("nan"),
            "loss_curve": [[result.step - len(losses) + i + 1, loss] for i, loss in enumerate(losses)
                           if i % max(1, len(losses) // 50) == 0 or i == len(losses) - 1],
            "val_curve": [[e["step"], e["val_loss"]] for e in result.evals], "steps": result.step,
            "tokens": result.step * training.batch_size * training.block_size, "seconds": round(seconds, 2)}
    if val_ids is not None:
        info["val_perplexity"] = perplexity(model, val_ids, training.block_size)
        info["val_loss"] = math.log(info["val_perplexity"])
    return info


@functools.lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int, tokenizer_chars: int) -> str:
    from .splits import code_corpus
    from .tokenizer import tokenizer_to_json, train_tokenizer

    return tokenizer_to_json(train_tokenizer([code_corpus("train", tokenizer_chars)], vocab_size))


def corpus_tokenizer(vocab_size: int = 2048, tokenizer_chars: int = 2_000_000):
    """The byte-level BPE of `vocab_size` learned from the first `tokenizer_chars` characters of the
    train split (deterministic; trained once per process for each pair)."""
    from .tokenizer import tokenizer_from_json

    return tokenizer_from_json(_tokenizer_json(vocab_size, tokenizer_chars))


def train_on_corpus(model: nn.Module, training: LMTraining, *, device: str = "cpu", progress: bool | None = False,
                    checkpoint_dir: str | os.PathLike | None = None,
                    metrics_path: str | os.PathLike | None = None) -> tuple[object, dict]:
    """(tokenizer, info): learns the recipe's tokenizer, then trains `model` in place on the train split
    (train_lm, documents separated by <|eos|>), validating on the validation split and scoring the
    test split. info: train_lm's dict plus "test_perplexity", "params", "tokenizer_seconds",
    "train_tokens", "test_tokens" and the recipe as "training"."""
    from .splits import code_documents
    from .tokenizer import encode_documents

    t0 = time.perf_counter()
    tok = corpus_tokenizer(training.vocab_size, training.tokenizer_chars)
    tok_seconds = time.perf_counter() - t0
    ids = encode_documents(tok, code_documents("train", training.train_chars))
    val = encode_documents(tok, code_documents("validation", training.eval_chars))
    info = train_lm(model, ids, training, val_ids=val, checkpoint_dir=checkpoint_dir, metrics_path=metrics_path,
                    progress=progress, device=device)
    test_docs = code_documents("test", training.eval_chars)
    test = encode_documents(tok, test_docs)
    test_ppl = perplexity(model, test, training.block_size)
    # per character, comparable across vocabularies: the stream's total −log₂ p over the characters it encodes
    bits_per_char = math.log2(test_ppl) * (test.numel() - 1) / sum(len(d) for d in test_docs)
    info.update(test_perplexity=test_ppl, test_bits_per_char=bits_per_char, params=lm_param_count(model.config),
                tokenizer_seconds=round(tok_seconds, 2), train_tokens=ids.numel(), test_tokens=test.numel(),
                training=training.to_dict())
    return tok, info


def trained_lm(store, training: LMTraining = LMTraining(), device: str = "cpu",
               progress: bool | None = False) -> tuple[nn.Module, object, dict]:
    """(model in eval mode, tokenizer, info): the code LM of `training`, from the ArtifactStore `store`
    when it holds one, else trained (train_on_corpus) and stored.

    The tokenizer is stored with the weights (its JSON in the entry's info), so a loaded entry
    encodes exactly as the model was trained; info is train_on_corpus's.
    """
    from ..artifacts import Recipe, TiedView, fingerprint
    from .splits import code_documents
    from .tokenizer import tokenizer_from_json, tokenizer_to_json

    docs = code_documents("train", training.train_chars)
    digest = hashlib.sha256("\x00".join(docs).encode()).hexdigest()
    config = training.config()
    recipe = Recipe(f"code-lm-{training.scale}-{training.role}", seed=training.seed, data=fingerprint(digest),
                    config={"training": training.to_dict(), "arch": ARCHITECTURES[(training.scale, training.role)]})

    def train(stored: TiedView) -> dict:
        tok, info = train_on_corpus(stored.inner, training, device=device, progress=progress,
                                    checkpoint_dir=store.work_dir(recipe))
        stored.inner.cpu()
        return {**info, "tokenizer": tokenizer_to_json(tok)}

    stored, info = store.get(recipe, build=lambda: TiedView(build_lm(config, training.seed)), train=train)
    info = dict(info)
    tokenizer = tokenizer_from_json(info.pop("tokenizer"))
    return stored.inner.to(device).eval(), tokenizer, info
