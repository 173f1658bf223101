"""Note 4: activation functions, from the perceptron's step to SwiGLU.

Three measurements, one per part of the claim:

* gradient flow: the weight-gradient norm of every layer of 20-layer MLPs
  (width 128, weights N(0, gain^2/fan_in) with torch's gain for the activation,
  GELU taking ReLU's) on random inputs; the per-layer rate
  rho = (|g_1| / |g_20|)^(1/19) must be <= 0.5 for sigmoid (its derivative is at
  most 1/4) and >= 0.9 for ReLU and GELU (less than 10% lost per layer);
* dead units: 3-hidden-layer MLPs (256 units each, He init) trained by SGD on
  sklearn digits at a normal (0.05) and a high (0.5) learning rate; a unit is
  dead when |f'(z)| <= 1e-3 on every training image. At the high rate ReLU must
  lose >= 1% of its units, LeakyReLU and GELU <= 0.1%;
* a small causal transformer LM on the standard library's source, character
  level, whose feed-forward activation is swapped at matched parameter count
  (d_ff = 4 d for ReLU/GELU, 2/3 of that for the gated SwiGLU/GEGLU: the same
  number of weights). SwiGLU and GEGLU must reach a lower validation loss than
  ReLU (Shazeer 2020 measured 1.944 and 1.942 vs 1.997 on C4 at 65k steps).
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from ..lm.corpus import CharVocab, sample_blocks, stdlib_corpus, train_val_split
from ..nn import activations as A
from ..nn.feedforward import FeedForward
from ..optim import AdamW
from .base import Check, Context, NoteExperiment, Result, Table

__all__ = ["Activations", "TinyLM"]

PLOTTED = ["step", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu", "mish", "softplus"]
STACK_GAINS = {"sigmoid": 1.0, "tanh": 5 / 3, "relu": math.sqrt(2), "gelu": math.sqrt(2)}  # nn.init.calculate_gain
DEAD_ACTS = ["relu", "leaky_relu", "gelu"]
LM_ACTS = ["relu", "gelu", "swiglu", "geglu"]
DEAD_EPS = 1e-3  # |f'(z)| at or below this on every input: the unit gets no gradient


# --- 1. gradient flow through deep stacks ------------------------------------------------------------

def layer_gradient_norms(act: str, depth: int, width: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """|dL/dW_l| for l = 1..depth of a plain MLP with gain-scaled Gaussian weights: (depth,)."""
    f, gain = A.ACTIVATIONS[act], STACK_GAINS[act]
    weights = [(torch.randn(width, width, generator=generator) * gain / math.sqrt(width)).requires_grad_()
               for _ in range(depth)]
    h = torch.randn(batch, width, generator=generator)
    for w in weights:
        h = f(h @ w.T)  # (B, width) -> (B, width)
    loss = (h * torch.randn(h.shape, generator=generator)).sum() / batch  # a random linear read-out
    return torch.stack([g.norm() for g in torch.autograd.grad(loss, weights)])


# --- 2. dead units after high-learning-rate training -------------------------------------------------

def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-3), torch.tensor(d.target)


def dead_fraction(act: str, lr: float, steps: int, x: torch.Tensor, y: torch.Tensor,
                  generator: torch.Generator, width: int = 256, depth: int = 3) -> tuple[float, float]:
    """Trains an MLP by SGD; returns (fraction of dead hidden units, training accuracy)."""
    f = A.ACTIVATIONS[act]
    sizes = [x.shape[1]] + [width] * depth + [10]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        params += [(torch.randn(fan_out, fan_in, generator=generator) * math.sqrt(2 / fan_in)).requires_grad_(),
                   torch.zeros(fan_out, requires_grad=True)]

    def forward(inputs, pre=None):
        h = inputs
        for i in range(0, len(params) - 2, 2):
            z = h @ params[i].T + params[i + 1]  # (B, fan_in) -> (B, width)
            if pre is not None:
                pre.append(z)
            h = f(z)
        return h @ params[-2].T + params[-1]

    opt = torch.optim.SGD(params, lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=generator)
        loss = F.cross_entropy(forward(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    pre: list[torch.Tensor] = []
    with torch.no_grad():
        logits = forward(x, pre)
    dead = []
    for z in pre:
        z = z.requires_grad_()
        (slope,) = torch.autograd.grad(f(z).sum(), z)  # f'(z) per input and unit
        dead.append((slope.abs().amax(0) <= DEAD_EPS).float())  # a NaN slope never counts as alive
    accuracy = float((logits.argmax(1) == y).float().mean()) if torch.isfinite(logits).all() else float("nan")
    return float(torch.cat(dead).mean()), accuracy


# --- 3. a small causal transformer LM ------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, d_ff: int, activation: str):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.ffn = FeedForward(d_model, d_ff, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, D)
        x = x + self.proj(att)
        return x + self.ffn(self.ln2(x))


class TinyLM(nn.Module):
    """A GPT-style character LM: tokens (B, T) -> logits (B, T, V), tied embeddings."""

    def __init__(self, vocab: int, d_model: int, n_layer: int, n_head: int, block: int, activation: str):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(block, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head, 4 * d_model, activation) for _ in range(n_layer))
        self.ln = nn.LayerNorm(d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        x = self.tok(ids) + self.pos(torch.arange(T))
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.tok.weight.T


def _init_(model: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def train_lm(activation: str, cfg: dict, train_ids, val_batches, vocab_size: int, seed: int):
    """Same init seed and batch order for every activation; returns (model, val-loss curve, final val loss)."""
    model = TinyLM(vocab_size, cfg["d_model"], cfg["n_layer"], cfg["n_head"], cfg["block"], activation)
    _init_(model, torch.Generator().manual_seed(seed))  # every random weight, from the seed
    opt = AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed + 1)
    steps, warmup, curve = cfg["steps"], cfg["steps"] // 10, []
    for step in range(1, steps + 1):
        for group in opt.param_groups:  # linear warmup, cosine decay to 10%
            t = step / warmup if step <= warmup else 0.55 + 0.45 * math.cos(math.pi * (step - warmup) / (steps - warmup))
            group["lr"] = cfg["lr"] * t
        x, y = sample_blocks(train_ids, cfg["block"], cfg["batch"], generator=gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % cfg["eval_every"] == 0 or step == steps:  # the curve on a quarter of the batches: cheap
            curve.append((step, evaluate(model, val_batches[: len(val_batches) // 4])))
    return model, curve, evaluate(model, val_batches)


@torch.no_grad()
def evaluate(model: nn.Module, batches) -> float:
    model.eval()
    losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in batches]
    model.train()
    return sum(losses) / len(losses)


class Activations(NoteExperiment):
    slug = "activations"
    single_threaded = True  # small models: one thread is faster and core-count independent

    def measure(self, ctx: Context) -> Result:
        import matplotlib.pyplot as plt

        metrics: dict[str, float] = {}
        checks: list[Check] = []
        tables: list[Table] = []

        # 0. Each function and its derivative.
        xs = torch.linspace(-4, 4, 801, dtype=torch.float64, requires_grad=True)
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for name in PLOTTED:
            ys = A.ACTIVATIONS[name](xs)
            (dy,) = torch.autograd.grad(ys.sum(), xs)
            axes[0].plot(xs.detach(), ys.detach(), lw=1.2, label=name)
            axes[1].plot(xs.detach(), dy, lw=1.2, label=name)
        axes[0].set(title="f(x)", xlabel="x", ylim=(-1.5, 4))
        axes[1].set(title="f'(x) (autograd, torch's conventions at kinks)", xlabel="x", ylim=(-0.2, 1.3))
        axes[0].legend(fontsize=7, ncol=2)
        ctx.save_figure(fig, "functions", "Activation functions and their derivatives.")
        ctx.progress(0.05, "functions")

        # 1. Gradient norm per layer through 20-layer stacks.
        depth, seeds = 20, ctx.pick(5, 20)
        gen = ctx.generator(1)
        norms = {a: torch.stack([layer_gradient_norms(a, depth, 128, 256, gen) for _ in range(seeds)]).mean(0)
                 for a in STACK_GAINS}
        rho = {a: float((n[0] / n[-1]) ** (1 / (depth - 1))) for a, n in norms.items()}
        for a in STACK_GAINS:
            metrics[f"grad_rate_{a}"] = rho[a]
            metrics[f"grad_first_over_last_{a}"] = float(norms[a][0] / norms[a][-1])
        checks.append(Check("sigmoid stack: per-layer gradient-norm rate rho = (|g_1|/|g_20|)^(1/19)",
                            rho["sigmoid"], "<=", 0.5))
        checks.append(Check("ReLU stack: per-layer gradient-norm rate rho", rho["relu"], ">=", 0.9))
        checks.append(Check("GELU stack: per-layer gradient-norm rate rho", rho["gelu"], ">=", 0.9))
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for a, n in norms.items():
            ax.semilogy(range(1, depth + 1), n, "o-", ms=3, label=f"{a} (rho={rho[a]:.3f})")
        ax.set(xlabel="layer (1 = input side)", ylabel=r"$\|\partial L/\partial W_l\|$",
               title=f"Gradient norm per layer, 20-layer MLPs (mean of {seeds} seeds)")
        ax.legend(fontsize=8)
        ctx.save_figure(fig, "gradient-flow", "Weight-gradient norm per layer through 20-layer stacks.")
        ctx.progress(0.15, "gradient flow")

        # 2. Dead units after high-learning-rate training.
        x, y = _digits()
        lrs, high = ctx.pick([0.05, 0.5], [0.05, 0.1, 0.2, 0.5]), 0.5
        dead_seeds, dead_steps = ctx.pick(3, 5), 300
        dead = {}
        for a in DEAD_ACTS:
            for lr in lrs:
                runs = [dead_fraction(a, lr, dead_steps, x, y, ctx.generator(100 + s)) for s in range(dead_seeds)]
                dead[a, lr] = (sum(r[0] for r in runs) / len(runs), sum(r[1] for r in runs) / len(runs))
        for a in DEAD_ACTS:
            metrics[f"dead_fraction_{a}_lr{high:g}"] = dead[a, high][0]
        checks.append(Check(f"ReLU: dead-unit fraction after SGD at lr {high:g}", dead["relu", high][0], ">=", 0.01))
        checks.append(Check(f"LeakyReLU: dead-unit fraction at lr {high:g}", dead["leaky_relu", high][0], "<=", 1e-3))
        checks.append(Check(f"GELU: dead-unit fraction at lr {high:g}", dead["gelu", high][0], "<=", 1e-3))
        tables.append(Table(f"Dead hidden units (|f'| <= {DEAD_EPS:g} on all 1797 digits) after {dead_steps} SGD "
                            f"steps, mean of {dead_seeds} seeds", ["activation", "lr", "dead fraction", "train accuracy"],
                            [[a, f"{lr:g}", f"{dead[a, lr][0]:.4f}", f"{dead[a, lr][1]:.3f}"]
                             for a in DEAD_ACTS for lr in lrs]))
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        w = 0.8 / len(lrs)
        for k, lr in enumerate(lrs):
            ax.bar([i + k * w for i in range(len(DEAD_ACTS))], [100 * dead[a, lr][0] for a in DEAD_ACTS], w,
                   label=f"lr {lr:g}")
        ax.set_xticks([i + w * (len(lrs) - 1) / 2 for i in range(len(DEAD_ACTS))], DEAD_ACTS)
        ax.set(ylabel="dead hidden units (%)", title="Dead units after SGD on digits")
        ax.legend()
        ctx.save_figure(fig, "dead-units", "Fraction of hidden units with no gradient on any training image.")
        ctx.progress(0.3, "dead units")

        # 3. Small transformer LM, FFN activation swapped at matched parameters.
        # d_ff = 4 d = 192 is divisible by 3, so the gated blocks' 2/3 width (128) matches exactly.
        cfg = ctx.pick(dict(d_model=48, n_layer=2, n_head=4, block=64, batch=32, steps=250, lr=3e-3, eval_every=50,
                            chars=400_000, val_batches=32, seeds=1),
                       dict(d_model=48, n_layer=2, n_head=4, block=64, batch=32, steps=500, lr=3e-3, eval_every=50,
                            chars=1_000_000, val_batches=64, seeds=2))
        corpus = stdlib_corpus(max_chars=cfg["chars"], seed=ctx.seed)
        train_text, val_text = train_val_split(corpus.text, 0.1)
        vocab = CharVocab.from_text(train_text, max_size=128)
        train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
        val_gen = ctx.generator(7)
        val_batches = [sample_blocks(val_ids, cfg["block"], cfg["batch"], generator=val_gen)
                       for _ in range(cfg["val_batches"])]
        lm = {}
        for k, a in enumerate(LM_ACTS):
            t0 = time.perf_counter()
            finals, curves = [], []
            for s in range(cfg["seeds"]):
                model, curve, final = train_lm(a, cfg, train_ids, val_batches, len(vocab), ctx.seed + 1000 * s)
                finals.append(final)
                curves.append(curve)
            ffn_params = sum(p.numel() for b in model.blocks for p in b.ffn.parameters())
            lm[a] = dict(val=sum(finals) / len(finals), params=sum(p.numel() for p in model.parameters()),
                         ffn=ffn_params, hidden=model.blocks[0].ffn.d_hidden, curve=curves[0],
                         seconds=time.perf_counter() - t0)
            metrics[f"lm_val_loss_{a}"] = lm[a]["val"]
            ctx.progress(0.3 + 0.7 * (k + 1) / len(LM_ACTS), f"LM with {a}")
        metrics["lm_params_relu"], metrics["lm_params_swiglu"] = lm["relu"]["params"], lm["swiglu"]["params"]
        for a in ("swiglu", "geglu"):
            checks.append(Check(f"LM: val loss(ReLU) - val loss({a}) at matched parameters (nats/char)",
                                lm["relu"]["val"] - lm[a]["val"], ">", 0.0))
        ranking = sorted(LM_ACTS, key=lambda a: lm[a]["val"])
        tables.append(Table(
            f"Char-level LM on the stdlib source ({len(train_text):,} train / {len(val_text):,} val chars, vocab "
            f"{len(vocab)}; d={cfg['d_model']}, {cfg['n_layer']} layers, {cfg['steps']} steps, "
            f"{cfg['seeds']} seed(s))",
            ["FFN activation", "hidden width", "FFN params", "total params", "val loss (nats/char)", "seconds"],
            [[a, lm[a]["hidden"], lm[a]["ffn"], lm[a]["params"], f"{lm[a]['val']:.4f}", f"{lm[a]['seconds']:.1f}"]
             for a in ranking]))
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for a in LM_ACTS:
            steps, losses = zip(*lm[a]["curve"])
            ax.plot(steps, losses, "o-", ms=3, label=f"{a} (final, all batches: {lm[a]['val']:.3f})")
        ax.set(xlabel="step", ylabel="val loss on 1/4 of the batches", title="Tiny LM, FFN activation swapped")
        ax.legend()
        ctx.save_figure(fig, "lm", "Validation loss of the character LM per FFN activation (first seed).")

        return Result(
            metrics=metrics, checks=checks, tables=tables,
            summary=(f"Gradient rate per layer: sigmoid {rho['sigmoid']:.3f}, ReLU {rho['relu']:.3f}, GELU "
                     f"{rho['gelu']:.3f}; dead units at lr {high:g}: ReLU {100 * dead['relu', high][0]:.1f}%, leaky "
                     f"{100 * dead['leaky_relu', high][0]:.1f}%, GELU {100 * dead['gelu', high][0]:.1f}%; LM val loss "
                     + ", ".join(f"{a} {lm[a]['val']:.3f}" for a in ranking) + "."),
        )
