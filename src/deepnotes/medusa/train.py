r"""Training Medusa heads: Medusa-1 (frozen base) and Medusa-2 (joint), on deepnotes.train.fit.

Head k (0-based) at position t predicts token t+k+2 (the base's own logits at t predict t+1).
With CE_k the mean cross-entropy of head k over the positions whose target exists,

    Medusa-1   L = Σ_k λ_k CE_k,                        λ_k = decay^k (0.8^k, the paper's weights),
               the base frozen (no gradient reaches it);
    Medusa-2   L = w_base CE_base + c Σ_k λ_k CE_k,     c = 0.2 (axolotl's medusa_heads_coefficient),
               base and heads trained jointly, the heads at lr × head_lr_multiplier (axolotl: ×4).

(axolotl stacks the base logits as index 0, so its head k gets 0.8^(k+1); here head k gets 0.8^k
in both modes, as the contract and the paper's λ_k state.)

Self-distillation (``MedusaTraining.self_distill``): instead of corpus text the heads learn from
the base model's own greedy continuations of corpus prompts. Under greedy decoding the token the
verifier accepts after a context is exactly the base's argmax, so a head trained on those
continuations learns the very quantity acceptance asks for: the target of head k at position t is
the base's greedy token t+k+2 given the greedy tokens before it. The prompt positions carry no
head/base targets (label -100); only the generated part is learned.

Per-head validation accuracy: top-1 / top-5 of head k against token t+k+2, and the exact-rank
accuracy acc[k, r] = P(target is head k's r-th ranked token) that tree growth multiplies along
paths (Medusa's gen_results).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ..artifacts import ArtifactStore, Recipe, TiedView, fingerprint
from ..optim import AdamW
from ..optim.schedules import get_schedule
from ..train import fit

__all__ = ["MedusaTraining", "head_weights", "medusa_loss", "head_accuracy", "distill_data", "token_blocks",
           "train_medusa", "trained_medusa", "IGNORE_INDEX"]

IGNORE_INDEX = -100  # a label that carries no loss (cross_entropy's ignore_index)


@dataclass(frozen=True)
class MedusaTraining:
    """Everything that determines trained heads (with the base and the data)."""

    num_heads: int = 4  # Medusa heads; head k predicts token t+k+2
    num_layers: int = 1  # ResBlocks per head
    shared_projection: bool = False  # heads feed the base's lm_head instead of owning a copy (MedusaModel)
    medusa2: bool = False  # False: Medusa-1 (frozen base); True: joint training with the base's LM loss
    steps: int = 300  # optimizer steps
    batch_size: int = 16  # sequences per step
    block_size: int = 128  # tokens per training sequence
    lr: float = 1e-3  # Medusa-1: the heads' lr; Medusa-2: the base's lr (heads: lr × head_lr_multiplier)
    head_lr_multiplier: float = 4.0  # Medusa-2 only (axolotl: 4)
    warmup: int = 20  # linear warm-up steps, then cosine to lr/10
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    decay: float = 0.8  # λ_k = decay^k
    coefficient: float = 0.2  # Medusa-2: c in L = w_base CE_base + c Σ λ_k CE_k
    base_weight: float = 1.0  # Medusa-2: w_base
    self_distill: bool = False  # train on the base's greedy continuations of corpus prompts
    distill_sequences: int = 256  # self-distillation: training sequences generated
    distill_prompt: int = 16  # self-distillation: corpus tokens of each prompt (continuation: block_size - this)
    val_sequences: int = 32  # validation sequences for the per-head accuracy
    seed: int = 0  # data order, prompt choice

    def __post_init__(self) -> None:
        for name in ("num_heads", "num_layers", "steps", "batch_size", "distill_sequences", "val_sequences"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) \
                or self.block_size < self.num_heads + 2:
            raise ValueError(f"block_size must be an int >= num_heads + 2 = {self.num_heads + 2} (head k needs "
                             f"token t+k+2), got {self.block_size!r}")
        if not (isinstance(self.warmup, int) and 0 <= self.warmup <= self.steps):
            raise ValueError(f"warmup must be an int in [0, steps={self.steps}], got {self.warmup!r}")
        if self.self_distill and not (isinstance(self.distill_prompt, int)
                                      and 1 <= self.distill_prompt < self.block_size):
            raise ValueError(f"distill_prompt must be an int in [1, block_size={self.block_size}), "
                             f"got {self.distill_prompt!r}")
        for name in ("lr", "head_lr_multiplier", "decay", "coefficient"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not self.base_weight >= 0 or not self.weight_decay >= 0:
            raise ValueError(f"base_weight and weight_decay must be >= 0, got {self.base_weight}, {self.weight_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")

    def to_dict(self) -> dict:
        return asdict(self)


def head_weights(num_heads: int, decay: float = 0.8) -> Tensor:
    """λ_k = decay^k for k = 0..num_heads-1 (float64)."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    return torch.tensor([decay ** k for k in range(num_heads)], dtype=torch.float64)


def _shifted_ce(logits: Tensor, labels: Tensor, shift: int) -> Tensor:
    """Mean CE of logits (B, T, V) at t against labels[:, t + shift], over targets that exist and are not ignored."""
    B, T, V = logits.shape
    pred = logits[:, : T - shift].reshape(-1, V)  # (B*(T-shift), V)
    target = labels[:, shift:].reshape(-1)
    if not (target != IGNORE_INDEX).any():
        return pred.sum() * 0.0  # no target: contributes nothing, keeps the graph
    return F.cross_entropy(pred.float(), target, ignore_index=IGNORE_INDEX)


def medusa_loss(output: Any, input_ids: Tensor, *, labels: Tensor | None = None, medusa2: bool = False,
                decay: float = 0.8, coefficient: float = 0.2, base_weight: float = 1.0) -> tuple[Tensor, dict]:
    r"""(loss, metrics) of a MedusaOutput on a batch.

    Args:
        output: the model's output with ``logits`` (B, T, V) and ``head_logits`` (K, B, T, V).
        input_ids: (B, T) the tokens the output was computed from.
        labels: (B, T) targets aligned with input_ids (IGNORE_INDEX = no target); default input_ids.
        medusa2: False: Σ_k decay^k CE_k; True: base_weight·CE_base + coefficient·Σ_k decay^k CE_k.

    CE_k compares head k's logits at t with labels[t+k+2]; CE_base the base's at t with labels[t+1].
    metrics: "loss_head{k}" per head, "loss_base" (computed in both modes; a constant in Medusa-1).
    """
    head_logits = getattr(output, "head_logits", None)
    if head_logits is None or head_logits.dim() != 4:
        raise ValueError("output must carry head_logits of shape (num_heads, B, T, V); call the model with "
                         "output_heads=True")
    K, B, T, V = head_logits.shape
    if input_ids.shape != (B, T):
        raise ValueError(f"input_ids must have shape (B, T) = {(B, T)} like the logits, got {tuple(input_ids.shape)}")
    labels = input_ids if labels is None else labels
    if labels.shape != (B, T):
        raise ValueError(f"labels must have shape {(B, T)}, got {tuple(labels.shape)}")
    if T < K + 2:
        raise ValueError(f"sequences of {T} tokens are too short for {K} heads: head {K - 1} needs token t+{K + 1}")
    lam = head_weights(K, decay)
    metrics: dict[str, float] = {}
    heads = head_logits.new_zeros(())
    for k in range(K):
        ce = _shifted_ce(head_logits[k], labels, k + 2)
        metrics[f"loss_head{k}"] = float(ce.detach())
        heads = heads + float(lam[k]) * ce
    base = _shifted_ce(output.logits, labels, 1)
    metrics["loss_base"] = float(base.detach())
    loss = base_weight * base + coefficient * heads if medusa2 else heads
    return loss, metrics


@torch.no_grad()
def head_accuracy(model: nn.Module, input_ids: Tensor, labels: Tensor | None = None, *, topk: int = 10,
                  batch_size: int = 16) -> dict:
    """Per-head accuracy on (N, T) sequences: {"top1": [K], "top5": [K], "rank": [[K x topk]],
    "base_top1": float, "count": [K]}; rank[k][r] = P(target t+k+2 is head k's r-th ranked token)."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (N, T), got shape {tuple(input_ids.shape)}")
    labels = input_ids if labels is None else labels
    was_training = model.training
    model.eval()
    hits = None
    base_hits = base_count = 0
    counts = None
    for i in range(0, input_ids.shape[0], batch_size):
        ids, lab = input_ids[i: i + batch_size], labels[i: i + batch_size]
        out = model(ids, output_heads=True)
        K, B, T, V = out.head_logits.shape
        r = min(topk, V)
        if hits is None:
            hits, counts = torch.zeros(K, r, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
        for k in range(K):
            s = k + 2
            ranked = out.head_logits[k][:, : T - s].topk(r, dim=-1).indices  # (B, T-s, r)
            target = lab[:, s:]
            valid = target != IGNORE_INDEX
            match = (ranked == target.unsqueeze(-1)) & valid.unsqueeze(-1)  # at most one rank matches
            hits[k] += match.flatten(0, 1).sum(0).double()
            counts[k] += valid.sum()
        target = lab[:, 1:]
        valid = target != IGNORE_INDEX
        base_hits += int(((out.logits[:, :-1].argmax(-1) == target) & valid).sum())
        base_count += int(valid.sum())
    model.train(was_training)
    rank = hits / counts.clamp(min=1).unsqueeze(1)
    return {"top1": rank[:, 0].tolist(), "top5": rank[:, :5].sum(1).tolist(), "rank": rank.tolist(),
            "base_top1": base_hits / max(base_count, 1), "count": counts.tolist()}


def token_blocks(token_ids: Tensor, block_size: int, max_blocks: int | None = None) -> Tensor:
    """Non-overlapping (N, block_size) blocks of a 1-D token stream (the tail that does not fill one is dropped)."""
    if not isinstance(token_ids, Tensor) or token_ids.dim() != 1 or token_ids.dtype not in (torch.int64, torch.int32):
        got = (f"{token_ids.dtype} {tuple(token_ids.shape)}" if isinstance(token_ids, Tensor)
               else type(token_ids).__name__)
        raise ValueError(f"token_ids must be a 1-D integer tensor, got {got}")
    n = token_ids.numel() // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n < 1:
        raise ValueError(f"token_ids has {token_ids.numel()} tokens, fewer than one block of {block_size}")
    return token_ids[: n * block_size].long().view(n, block_size)


@torch.no_grad()
def distill_data(base: nn.Module, token_ids: Tensor, n: int, prompt_len: int, new_tokens: int, *,
                 generator: torch.Generator, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """The base's greedy continuations of n corpus prompts: (input_ids, labels), each (n, prompt_len + new_tokens).

    Prompts are windows of ``token_ids`` at starts drawn from ``generator``; the continuation is
    the base's argmax token after token, over a KV cache, for exactly ``new_tokens`` tokens (no
    stop at eos, so every row has the same length). labels are the ids with the prompt positions
    set to IGNORE_INDEX: only the base's own tokens are targets.
    """
    import inspect

    from transformers import DynamicCache

    cache_name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    if token_ids.dim() != 1 or token_ids.numel() <= prompt_len:
        raise ValueError(f"token_ids must be 1-D with more than prompt_len={prompt_len} tokens, "
                         f"got shape {tuple(token_ids.shape)}")
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be positive, got {new_tokens}")
    starts = torch.randint(0, token_ids.numel() - prompt_len, (n,), generator=generator)
    prompts = torch.stack([token_ids[s: s + prompt_len] for s in starts.tolist()]).long()
    was_training = base.training
    base.eval()
    rows = []
    for i in range(0, n, batch_size):
        seq = prompts[i: i + batch_size]
        cache = DynamicCache()
        logits = base(input_ids=seq, use_cache=True, **{cache_name: cache}).logits
        for _ in range(new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (b, 1)
            seq = torch.cat([seq, nxt], dim=1)
            if seq.shape[1] == prompt_len + new_tokens:
                break
            logits = base(input_ids=nxt, use_cache=True, **{cache_name: cache}).logits
        rows.append(seq)
    base.train(was_training)
    ids = torch.cat(rows)
    labels = ids.clone()
    labels[:, :prompt_len] = IGNORE_INDEX
    return ids, labels


def _datasets(base: nn.Module, token_ids: Tensor, val_ids: Tensor | None, cfg: MedusaTraining,
              generator: torch.Generator) -> tuple[TensorDataset, tuple[Tensor, Tensor] | None]:
    if cfg.self_distill:
        new = cfg.block_size - cfg.distill_prompt
        train = distill_data(base, token_ids, cfg.distill_sequences, cfg.distill_prompt, new, generator=generator)
        val = (distill_data(base, val_ids, cfg.val_sequences, cfg.distill_prompt, new, generator=generator)
               if val_ids is not None else None)
        return TensorDataset(*train), val
    blocks = token_blocks(token_ids, cfg.block_size)
    val = None
    if val_ids is not None:
        v = token_blocks(val_ids, cfg.block_size, max_blocks=cfg.val_sequences)
        val = (v, v)
    return TensorDataset(blocks, blocks), val


def train_medusa(model: nn.Module, token_ids: Tensor, training: MedusaTraining, *, val_ids: Tensor | None = None,
                 checkpoint_dir=None, metrics_path=None, progress: bool | None = False, device: str = "cpu",
                 stop_after: int | None = None) -> dict:
    """Trains a MedusaModel in place on a 1-D token stream; returns a JSON-able info dict.

    Medusa-1 freezes the base for the run (its requires_grad flags are restored afterwards) and
    optimizes the heads alone; Medusa-2 optimizes two AdamW param groups, the base at ``lr`` and
    the heads at ``lr × head_lr_multiplier``. Warm-up then cosine to lr/10, clipping, fp32.
    ``checkpoint_dir`` gives exact resume (fit); ``stop_after`` ends this call after that many
    steps of the run, as an interruption would. info: {"loss_curve", "final_loss", "steps",
    "seconds", "head_losses" (last step), "val" (head_accuracy on val_ids, when given),
    "train_sequences"}.
    """
    cfg = training
    if not isinstance(cfg, MedusaTraining):
        raise TypeError(f"training must be a MedusaTraining, got {type(cfg).__name__}")
    heads, base = getattr(model, "heads", None), getattr(model, "base", None)
    if heads is None or base is None:
        raise TypeError(f"model must be a MedusaModel (with .base and .heads), got {type(model).__name__}")
    if len(heads) != cfg.num_heads:
        raise ValueError(f"model has {len(heads)} heads, training.num_heads is {cfg.num_heads}")
    generator = torch.Generator().manual_seed(cfg.seed)
    data, val = _datasets(base, token_ids, val_ids, cfg, generator)
    if len(data) < cfg.batch_size:
        raise ValueError(f"token_ids give {len(data)} training sequences of {cfg.block_size} tokens, fewer than "
                         f"batch_size={cfg.batch_size}")
    flags = [p.requires_grad for p in base.parameters()]
    model.to(device)
    if cfg.medusa2:
        for p in base.parameters():
            p.requires_grad_(True)
        groups = [{"params": list(base.parameters()), "lr": cfg.lr},
                  {"params": list(heads.parameters()), "lr": cfg.lr * cfg.head_lr_multiplier}]
    else:
        for p in base.parameters():
            p.requires_grad_(False)
        groups = [{"params": list(heads.parameters()), "lr": cfg.lr}]
    opt = AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = get_schedule("cosine", warmup_steps=cfg.warmup, total_steps=cfg.steps, min_ratio=0.1)
    last: dict = {}

    def loss_fn(module, batch):
        ids, labels = batch
        out = module(ids, output_heads=True)
        loss, metrics = medusa_loss(out, ids, labels=labels, medusa2=cfg.medusa2, decay=cfg.decay,
                                    coefficient=cfg.coefficient, base_weight=cfg.base_weight)
        last.update(metrics)
        return loss, metrics

    t0 = time.perf_counter()
    try:
        result = fit(model, opt, data, loss_fn, schedule=schedule, generator=generator,
                     max_steps=stop_after or cfg.steps, batch_size=cfg.batch_size, grad_clip=cfg.grad_clip,
                     seed=cfg.seed, device=device, checkpoint_dir=checkpoint_dir, metrics_path=metrics_path,
                     progress=progress, log_every=max(1, cfg.steps // 20))
    finally:
        for p, flag in zip(base.parameters(), flags):
            p.requires_grad_(flag)
    losses = result.losses
    window = max(1, math.ceil(0.1 * len(losses))) if losses else 1
    curve = [[i + 1, sum(losses[max(0, i + 1 - window): i + 1]) / len(losses[max(0, i + 1 - window): i + 1])]
             for i in range(0, len(losses), max(1, len(losses) // 50))]
    info = {"loss_curve": curve, "final_loss": sum(losses[-window:]) / window if losses else float("nan"),
            "steps": result.step, "seconds": round(time.perf_counter() - t0, 2), "head_losses": last,
            "train_sequences": len(data)}
    if val is not None:
        info["val"] = head_accuracy(model, val[0].to(device), val[1].to(device))
    return info


def trained_medusa(store: ArtifactStore, base: nn.Module, training: MedusaTraining, token_ids: Tensor,
                   val_ids: Tensor | None = None, *, name: str = "medusa-heads") -> tuple[nn.Module, dict]:
    """(MedusaModel, info): heads for ``base`` trained by ``training`` on ``token_ids``, loaded from
    ``store`` when it holds them, else trained and stored.

    The recipe's data fingerprint covers the base's weights and both token streams, so other
    base weights or data never reuse stale heads. Medusa-1 stores the heads alone (the base is
    unchanged and shared with the caller); Medusa-2 trains a copy of the base and stores the whole
    model, leaving the caller's base untouched.
    """
    from .heads import MedusaModel

    state = base.state_dict()
    data = fingerprint(*[state[k] for k in sorted(state)], token_ids,
                       val_ids if val_ids is not None else "no-val")
    recipe = Recipe(name, config={"training": training.to_dict(), "base": type(base).__name__}, seed=training.seed,
                    data=data)
    holder: dict = {}

    def build() -> nn.Module:
        owner = copy.deepcopy(base) if training.medusa2 else base
        holder["model"] = MedusaModel(owner, num_heads=training.num_heads, num_layers=training.num_layers,
                                      shared_projection=training.shared_projection)
        return TiedView(holder["model"]) if training.medusa2 else holder["model"].heads

    def train(_module: nn.Module) -> dict:
        return train_medusa(holder["model"], token_ids, training, val_ids=val_ids)

    _, info = store.get(recipe, build=build, train=train)
    return holder["model"].eval(), info
