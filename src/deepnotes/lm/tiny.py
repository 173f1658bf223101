r"""A tiny GPT-style character language model, the one home of the notes' small transformer.

Each block is pre-norm (GPT-2, Radford et al. 2019; nanoGPT's layout):

    x ← x + W_o · Attn(LN₁(x)),   Attn(q, k, v) = softmax(q kᵀ / √d_h + M) v,   M_ij = −∞ for j > i
    x ← x + FFN(LN₂(x)),          FFN = deepnotes.nn.FeedForward(d, d_ff, activation)

and the model is

    logits = LN(blocks(E[ids] + P[0..T−1])) Eᵀ                    (tied input and output embeddings)

The feed-forward activation is a parameter, so one architecture serves every
activation of note 4: a plain block with d_ff = 4d, or a gated one (SwiGLU,
GEGLU, ...) whose hidden width FeedForward cuts to ⌊2/3 d_ff⌋ so that the
parameter counts match (exactly when d_ff is a multiple of 3).

Initialisation is GPT-2's: every matrix (embeddings included) from N(0, 0.02²),
LayerNorm weights 1 and biases 0, drawn from ``generator`` when one is given, so
the same generator state gives the same model and torch's global generator is
left untouched.

``train_char_lm`` trains it on random windows of a token stream: AdamW
(β = (0.9, 0.95), weight decay 0.1), gradients clipped to norm 1, and the lr
γ_t = γ · warmup_cosine(t; T_w, T, r = 0.1) for steps t = 1..T (linear warm-up,
then half a cosine down to 10%). ``char_lm`` gets such a model from an
ArtifactStore, so every note that asks for the same recipe shares one training.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..artifacts import Recipe, fingerprint
from ..nn.feedforward import FeedForward
from ..nn.init import rng_scope
from ..optim import AdamW
from ..optim.schedules import get_schedule, set_lr
from .corpus import sample_blocks

__all__ = ["TinyLMConfig", "Block", "TinyLM", "count_params", "CharLMTraining", "train_char_lm", "evaluate_lm",
           "char_lm"]

INIT_STD = 0.02  # GPT-2's standard deviation for every weight matrix


@dataclass(frozen=True)
class TinyLMConfig:
    vocab: int  # V: number of token ids
    d_model: int = 48  # D: residual width
    n_layer: int = 2  # number of blocks
    n_head: int = 4  # H: attention heads, D % H == 0
    block: int = 64  # longest context T the position table covers
    activation: str = "relu"  # FFN activation, a name in deepnotes.nn.activations.ACTIVATIONS
    d_ff: int | None = None  # FFN width before the gated 2/3 cut; None means 4 D

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """One pre-norm transformer block: (B, T, D) -> (B, T, D), causal."""

    def __init__(self, d_model: int, n_head: int, d_ff: int, activation: str):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"Block: d_model={d_model} must be divisible by n_head={n_head}")
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.ffn = FeedForward(d_model, d_ff, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        H = self.n_head
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)  # 3 x (B, T, D)
        q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))  # (B, T, D) -> (B, H, T, D/H)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D/H)
        att = att.transpose(1, 2).reshape(B, T, D)  # (B, H, T, D/H) -> (B, T, D)
        x = x + self.proj(att)
        return x + self.ffn(self.ln2(x))


class TinyLM(nn.Module):
    """A GPT-style character LM: token ids (B, T) int64 -> next-token logits (B, T, V), T <= block.

    Arguments as in TinyLMConfig; ``generator`` draws the initial weights (see the
    module docstring). Position t's logits depend on ids[:, :t+1] only.
    """

    def __init__(self, vocab: int, d_model: int = 48, n_layer: int = 2, n_head: int = 4, block: int = 64,
                 activation: str = "relu", d_ff: int | None = None, generator: torch.Generator | None = None):
        super().__init__()
        for name, value in (("vocab", vocab), ("d_model", d_model), ("n_layer", n_layer), ("n_head", n_head),
                            ("block", block)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TinyLM: {name} must be a positive int, got {value!r}")
        self.config = TinyLMConfig(vocab, d_model, n_layer, n_head, block, activation, d_ff)
        d_ff = 4 * d_model if d_ff is None else d_ff
        # torch's layers draw their default init from the global generator: fork it, leave it as it was.
        with rng_scope(generator) if generator is not None else contextlib.nullcontext():
            self.tok = nn.Embedding(vocab, d_model)  # E, also the output projection
            self.pos = nn.Embedding(block, d_model)  # P
            self.blocks = nn.ModuleList(Block(d_model, n_head, d_ff, activation) for _ in range(n_layer))
            self.ln = nn.LayerNorm(d_model)
        self.reset_parameters(generator)

    @classmethod
    def from_config(cls, config: TinyLMConfig, generator: torch.Generator | None = None) -> "TinyLM":
        return cls(**config.to_dict(), generator=generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2's init: matrices ~ N(0, 0.02²), LayerNorm (1, 0); from `generator` when given."""
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, INIT_STD, generator=generator)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.reset_parameters()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        if T > self.config.block:
            raise ValueError(f"TinyLM: context T={T} exceeds block={self.config.block}")
        x = self.tok(ids) + self.pos(torch.arange(T, device=ids.device))  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.tok.weight.T  # (B, T, D) @ (D, V) -> (B, T, V)


def count_params(module: nn.Module) -> int:
    """Number of parameters (tied weights counted once, as .parameters() yields them)."""
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class CharLMTraining:
    steps: int = 250  # T: optimizer steps
    batch: int = 32  # windows per step
    block: int = 64  # window length (<= the model's block)
    lr: float = 3e-3  # peak learning rate γ
    warmup: int = 25  # T_w: linear warm-up steps
    min_ratio: float = 0.1  # r: the cosine ends at r·γ
    weight_decay: float = 0.1  # AdamW's λ (decoupled, scaled by the lr as in torch)
    beta2: float = 0.95  # AdamW's β₂ (β₁ = 0.9)
    grad_clip: float = 1.0  # max global gradient norm
    eval_every: int = 50  # steps between points of the validation curve
    val_batches: int = 32  # fixed validation batches (B x T windows of the held-out ids)

    def to_dict(self) -> dict:
        return asdict(self)


def train_char_lm(model: nn.Module, train_ids: torch.Tensor, val_ids: torch.Tensor, cfg: CharLMTraining,
                  generator: torch.Generator) -> dict:
    """Trains `model` in place on windows of `train_ids` (N,); validates on windows of `val_ids` (M,).

    `generator` seeds the validation windows' own stream with its first draw, then draws every
    training window, so one seed fixes both whatever the model, and the number of validation
    batches does not move the batch order. Returns JSON-able
    ``{"val_loss": mean loss on all validation batches, "curve": [[step, loss on their first quarter], ...]}``.
    """
    if cfg.warmup > cfg.steps:
        raise ValueError(f"train_char_lm: warmup={cfg.warmup} must be <= steps={cfg.steps}")
    val_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (), generator=generator)))
    val_batches = [sample_blocks(val_ids, cfg.block, cfg.batch, generator=val_gen) for _ in range(cfg.val_batches)]
    probe = val_batches[: max(1, len(val_batches) // 4)]  # the curve on a quarter of the batches: cheap
    opt = AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay)
    schedule = get_schedule("cosine", warmup_steps=cfg.warmup, total_steps=cfg.steps, min_ratio=cfg.min_ratio)
    curve = []
    model.train()
    for step in range(1, cfg.steps + 1):
        set_lr(opt, step, schedule)
        x, y = sample_blocks(train_ids, cfg.block, cfg.batch, generator=generator)  # (B, T), (B, T)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())  # (B*T, V) vs (B*T,)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve.append([step, evaluate_lm(model, probe)])
    return {"val_loss": evaluate_lm(model, val_batches), "curve": curve}


@torch.no_grad()
def evaluate_lm(model: nn.Module, batches: list) -> float:
    """Mean next-token cross-entropy (nats/token) over (x, y) batches; the model's mode is restored."""
    was_training = model.training
    model.eval()
    losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in batches]
    model.train(was_training)
    return sum(losses) / len(losses)


def char_lm(store, config: TinyLMConfig, training: CharLMTraining, seed: int, train_ids: torch.Tensor,
            val_ids: torch.Tensor) -> tuple[TinyLM, dict]:
    """(model, info): the TinyLM of `config` trained by `training` from `seed`, from the ArtifactStore
    `store` when it holds one, else trained (train_char_lm) and stored; info is train_char_lm's dict.

    Seed s draws the initial weights (generator s) and the windows (generator s + 1), so every
    activation trained with seed s starts from the same generator state and sees the same batches.
    """
    recipe = Recipe("char-lm", config={"model": config.to_dict(), "training": training.to_dict()}, seed=seed,
                    data=fingerprint(train_ids, val_ids))
    return store.get(
        recipe, build=lambda: TinyLM.from_config(config, generator=torch.Generator().manual_seed(seed)),
        train=lambda m: train_char_lm(m, train_ids, val_ids, training, torch.Generator().manual_seed(seed + 1)))
