r"""Note 4: activation functions, from the perceptron's step to SwiGLU.

Three parts of the claim, each a pure function returning its metrics, checks and tables:

* ``gradient_flow``: 20-layer MLPs z_l = W_l h_{l-1}, h_l = f(z_l), W_l ~ N(0, g²/n) with torch's gain g
  (GELU taking ReLU's), Gaussian inputs, a random linear read-out. Backprop gives
  δ_l = f'(z_l) ⊙ W_{l+1}ᵀ δ_{l+1}, so |δ_l| <= max|f'| · ‖W_{l+1}‖₂ · |δ_{l+1}|, and σ' <= 1/4 makes the
  sigmoid stack lose a constant factor per layer. Per seed, ρ = (|∂L/∂W_1| / |∂L/∂W_L|)^(1/(L-1));
  its 95% interval over seeds must lie below 0.5 for sigmoid and above 0.9 for ReLU and GELU;
* ``dead_units``: 64-256-256-256-10 MLPs (He init) trained by SGD on the digits at lr 0.05 and 0.5; a
  unit is dead when |f'(z)| <= 1e-3 on every training image. The interval over seeds of ReLU's dead
  fraction at lr 0.5 must lie above 1%, LeakyReLU's and GELU's below 0.1%;
* ``lm_comparison``: the character LM of deepnotes.lm.tiny on the standard library's source, FFN
  activation swapped at matched parameters (d_ff = 4d plain, 2/3 of it gated). Seed s gives every
  activation the same init seed, batch order and validation batches, so runs pair by seed: the 95%
  interval of the mean of loss(ReLU) − loss(X) must lie above 0 for X = SwiGLU and GEGLU (Shazeer
  2020: 1.944 and 1.942 vs 1.997 on C4 after 65k steps).

Plots are separate functions; ``Activations.measure`` composes the parts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..lm.corpus import CharVocab, stdlib_corpus, train_val_split
from ..lm.tiny import CharLMTraining, TinyLMConfig, char_lm, count_params
from ..nn import activations as A
from .base import Check, Context, NoteExperiment, Part, Result, Table
from .digits import digits_features
from .parallel import Plan, run_plans
from .stats import mean_ci, paired_ci

__all__ = ["Activations", "FlowConfig", "DeadConfig", "LMConfig", "configs",
           "random_stack", "stack_gradients", "gradient_rate", "gradient_flow", "dead_mask", "dead_units_run",
           "dead_units", "lm_run", "lm_comparison"]

PLOTTED = ["step", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu", "mish", "softplus"]
STACK_GAINS = {"sigmoid": 1.0, "tanh": 5 / 3, "relu": math.sqrt(2), "gelu": math.sqrt(2)}  # nn.init.calculate_gain
DEAD_ACTS = ["relu", "leaky_relu", "gelu"]
DEAD_EPS = 1e-3  # |f'(z)| at or below this on every input: the unit gets no gradient
GATED_CLAIMED = ("swiglu", "geglu")  # the claim: each beats ReLU
NAME = {"relu": "ReLU", "gelu": "GELU", "swiglu": "SwiGLU", "geglu": "GEGLU"}
COST_ORDER = ("swiglu", "geglu", "gelu", "relu")  # slowest LM first, so a pool's last runs are short


@dataclass(frozen=True)
class FlowConfig:
    depth: int = 20  # L: layers of the stack
    width: int = 128  # n: units per layer
    batch: int = 256  # Gaussian inputs
    seeds: int = 5  # stacks per activation; ρ's interval is over these


@dataclass(frozen=True)
class DeadConfig:
    lrs: tuple = (0.05, 0.5)  # SGD learning rates; the last is the high one, run for every activation
    seeds: int = 5  # runs per (activation, lr), the same seeds for each
    steps: int = 300  # SGD steps of batch 64
    width: int = 256  # hidden units per layer
    depth: int = 3  # hidden layers


@dataclass(frozen=True)
class LMConfig:
    activations: tuple = ("relu", "swiglu", "geglu")  # FFN activations; relu is the baseline
    seeds: int = 3  # paired runs per activation
    chars: int = 400_000  # corpus size (10% held out)
    d_model: int = 48  # d_ff = 4 d_model, a multiple of 3 so the gated 2/3 width matches exactly
    n_layer: int = 2
    n_head: int = 4
    train: CharLMTraining = CharLMTraining(val_batches=16)  # 250 steps of 32 x 64 characters


def configs(ctx: Context) -> tuple[FlowConfig, DeadConfig, LMConfig]:
    """The three parts' sizes at ctx's scale (tiny: every code path in a few seconds)."""
    flow = ctx.pick(FlowConfig(), FlowConfig(seeds=20), tiny=FlowConfig(depth=6, width=16, batch=16, seeds=2))
    dead = ctx.pick(DeadConfig(), DeadConfig(lrs=(0.05, 0.1, 0.2, 0.5), seeds=10),
                    tiny=DeadConfig(seeds=2, steps=5, width=16))
    lm = ctx.pick(LMConfig(),
                  LMConfig(activations=("relu", "gelu", "swiglu", "geglu"), seeds=5, chars=1_000_000,
                           train=CharLMTraining(steps=500, warmup=50, val_batches=64)),
                  tiny=LMConfig(seeds=2, chars=20_000, d_model=24, n_layer=1, n_head=2,
                                train=CharLMTraining(steps=4, batch=4, block=16, warmup=1, eval_every=2,
                                                     val_batches=4)))
    return flow, dead, lm


# --- 1. gradient flow through deep stacks ------------------------------------------------------------

def random_stack(depth: int, width: int, gain: float, generator: torch.Generator) -> list[torch.Tensor]:
    """depth weight matrices (width, width), entries N(0, gain² / width)."""
    return [torch.randn(width, width, generator=generator) * gain / math.sqrt(width) for _ in range(depth)]


def stack_gradients(act: str, weights: list[torch.Tensor], x: torch.Tensor,
                    readout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(|∂L/∂W_l|, |∂L/∂z_l|), each (depth,), of L = <f(W_L f(... f(W_1 x))), readout> / B.

    x and readout: (B, n); weights: depth matrices (n, n), left untouched.
    """
    f = A.ACTIVATIONS[act]
    weights = [w.detach().clone().requires_grad_() for w in weights]
    h, pre = x, []
    for w in weights:
        z = h @ w.T  # (B, n) -> (B, n)
        z.retain_grad()
        pre.append(z)
        h = f(z)
    ((h * readout).sum() / x.shape[0]).backward()
    return torch.stack([w.grad.norm() for w in weights]), torch.stack([z.grad.norm() for z in pre])


def gradient_rate(norms: torch.Tensor) -> float:
    """Per-layer rate ρ = (n_1 / n_L)^(1/(L-1)): a geometric sequence n_l = c ρ^(L-l) gives back ρ."""
    return float((norms[0] / norms[-1]) ** (1 / (len(norms) - 1)))


def gradient_flow(cfg: FlowConfig, generator: torch.Generator) -> Part:
    norms, rates = {}, {}
    for act, gain in STACK_GAINS.items():
        runs = [stack_gradients(act, random_stack(cfg.depth, cfg.width, gain, generator),
                                torch.randn(cfg.batch, cfg.width, generator=generator),
                                torch.randn(cfg.batch, cfg.width, generator=generator))[0] for _ in range(cfg.seeds)]
        norms[act] = torch.stack(runs).mean(0)
        rates[act] = mean_ci([gradient_rate(n) for n in runs], statistic="per-layer gradient rate")
    metrics = {f"grad_rate_{a}": rates[a].mean for a in STACK_GAINS}
    metrics.update({f"grad_first_over_last_{a}": float(n[0] / n[-1]) for a, n in norms.items()})
    rho = f"rho = (|g_1|/|g_{cfg.depth}|)^(1/{cfg.depth - 1})"
    checks = [Check.ci_below(f"sigmoid stack: per-layer gradient-norm rate {rho}", rates["sigmoid"], 0.5,
                             label="sigmoid rho CI high"),
              Check.ci_above(f"ReLU stack: {rho}", rates["relu"], 0.9, label="ReLU rho CI low"),
              Check.ci_above(f"GELU stack: {rho}", rates["gelu"], 0.9, label="GELU rho CI low")]
    return Part(metrics, checks, data=dict(norms=norms, rates=rates, cfg=cfg))


# --- 2. dead units after high-learning-rate training -------------------------------------------------

def dead_mask(act: str, z: torch.Tensor, eps: float = DEAD_EPS) -> torch.Tensor:
    """(units,) bool: |f'(z)| <= eps on every row of the pre-activations z (N, units); a NaN slope is dead."""
    z = z.detach().requires_grad_()
    (slope,) = torch.autograd.grad(A.ACTIVATIONS[act](z).sum(), z)  # f'(z), elementwise
    return ~(slope.abs() > eps).any(0)


def dead_units_run(act: str, lr: float, cfg: DeadConfig, x: torch.Tensor, y: torch.Tensor,
                   seed: int) -> tuple[float, float]:
    """Trains an MLP by SGD from `seed`; returns (fraction of dead hidden units, training accuracy)."""
    f, gen = A.ACTIVATIONS[act], torch.Generator().manual_seed(seed)
    sizes = [x.shape[1]] + [cfg.width] * cfg.depth + [int(y.max()) + 1]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        params += [(torch.randn(fan_out, fan_in, generator=gen) * math.sqrt(2 / fan_in)).requires_grad_(),
                   torch.zeros(fan_out, requires_grad=True)]

    def forward(inputs, pre=None):
        h = inputs
        for i in range(0, len(params) - 2, 2):
            z = h @ params[i].T + params[i + 1]  # (B, fan_in) -> (B, width)
            if pre is not None:
                pre.append(z)
            h = f(z)
        return h @ params[-2].T + params[-1]

    for _ in range(cfg.steps):  # plain SGD, θ ← θ − η ∇L (torch.optim would import dynamo in every worker)
        idx = torch.randint(0, len(x), (64,), generator=gen)
        grads = torch.autograd.grad(F.cross_entropy(forward(x[idx]), y[idx]), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
    pre: list[torch.Tensor] = []
    with torch.no_grad():
        logits = forward(x, pre)
    dead = torch.cat([dead_mask(act, z) for z in pre]).float().mean()
    accuracy = float((logits.argmax(1) == y).float().mean()) if torch.isfinite(logits).all() else math.nan
    return float(dead), accuracy


def dead_units(cfg: DeadConfig, x: torch.Tensor, y: torch.Tensor, seed: int) -> Plan:
    # The lower rates are ReLU's control: LeakyReLU and GELU lose no unit even at the high one.
    high = cfg.lrs[-1]
    keys = [(a, lr) for a in DEAD_ACTS for lr in cfg.lrs if a == "relu" or lr == high]

    def finish(out: list) -> Part:
        runs = {k: out[i * cfg.seeds:(i + 1) * cfg.seeds] for i, k in enumerate(keys)}
        dead = {k: mean_ci([r[0] for r in v], statistic="dead fraction") for k, v in runs.items()}
        acc = {k: sum(r[1] for r in v) / len(v) for k, v in runs.items()}
        checks = [Check.ci_above(f"ReLU: dead-unit fraction after SGD at lr {high:g}", dead["relu", high], 0.01,
                                 label="ReLU dead CI low"),
                  Check.ci_below(f"LeakyReLU: dead-unit fraction at lr {high:g}", dead["leaky_relu", high], 1e-3,
                                 label="leaky dead CI high"),
                  Check.ci_below(f"GELU: dead-unit fraction at lr {high:g}", dead["gelu", high], 1e-3,
                                 label="GELU dead CI high")]
        table = Table(f"Dead hidden units (|f'| <= {DEAD_EPS:g} on all {len(y)} digits; {cfg.width * cfg.depth} "
                      f"units) after {cfg.steps} SGD steps: mean and 95% CI over n seeds",
                      ["activation", "lr", "dead fraction", "95% CI", "n", "train accuracy"],
                      [[a, f"{lr:g}", f"{dead[a, lr].mean:.4f}", f"[{dead[a, lr].low:.4f}, {dead[a, lr].high:.4f}]",
                        dead[a, lr].n, f"{acc[a, lr]:.3f}"] for a, lr in keys])
        metrics = {f"dead_fraction_{a}_lr{high:g}": dead[a, high].mean for a in DEAD_ACTS}
        return Part(metrics, checks, [table], data=dict(dead=dead, keys=keys, cfg=cfg))

    return Plan([(dead_units_run, (a, lr, cfg, x, y, seed + 100 + s)) for a, lr in keys for s in range(cfg.seeds)],
                finish)


# --- 3. a small causal transformer LM, FFN activation swapped ---------------------------------------

def lm_run(store, config: TinyLMConfig, training: CharLMTraining, seed: int, train_ids: torch.Tensor,
           val_ids: torch.Tensor) -> dict:
    """One char LM through the artifact store (lm.tiny.char_lm): its info, sizes, and whether it was loaded."""
    hits = store.hits
    model, info = char_lm(store, config, training, seed, train_ids, val_ids)
    ffn = model.blocks[0].ffn
    return dict(info, params=count_params(model), ffn_params=config.n_layer * count_params(ffn),
                hidden=ffn.d_hidden, loaded=store.hits > hits)


def lm_comparison(cfg: LMConfig, ctx: Context) -> Plan:
    train_text, val_text = train_val_split(stdlib_corpus(max_chars=cfg.chars, seed=ctx.seed).text, 0.1)
    vocab = CharVocab.from_text(train_text, max_size=128)
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
    model = dict(vocab=len(vocab), d_model=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head, block=cfg.train.block)
    seeds = [ctx.seed + 1000 * k for k in range(cfg.seeds)]
    slowest_first = sorted(cfg.activations, key=lambda a: COST_ORDER.index(a) if a in COST_ORDER else -1)
    jobs = [(a, s) for a in slowest_first for s in seeds]
    counts = ctx.artifacts.counts()

    def finish(out: list) -> Part:
        ctx.artifacts.add_counts(counts, [r["loaded"] for r in out])
        runs = {a: [r for (b, _), r in zip(jobs, out) if b == a] for a in cfg.activations}  # in seed order
        loss = {a: [r["val_loss"] for r in runs[a]] for a in cfg.activations}
        level = {a: mean_ci(loss[a], statistic="val loss") for a in cfg.activations}
        gain = {a: paired_ci(loss["relu"], loss[a], statistic="paired val-loss difference ReLU - X")
                for a in cfg.activations if a != "relu"}
        checks = [Check.ci_above(f"LM: val loss(ReLU) - val loss({NAME[a]}) at matched parameters, paired by "
                                 "seed (nats/char)", gain[a], 0.0, label=f"{NAME[a]} gain CI low")
                  for a in GATED_CLAIMED]
        table = Table(
            f"Char-level LM on the stdlib source ({len(train_text):,} train / {len(val_text):,} val chars, vocab "
            f"{len(vocab)}; d={cfg.d_model}, {cfg.n_layer} layers, {cfg.train.steps} steps). Val loss: mean ± 95% "
            "CI half-width over n seeds; gain: loss(ReLU) - loss(X) paired by seed, mean [95% CI]",
            ["FFN activation", "hidden width", "FFN params", "total params", "val loss (nats/char)", "n",
             "gain vs ReLU"],
            [[a, runs[a][0]["hidden"], runs[a][0]["ffn_params"], runs[a][0]["params"],
              f"{level[a].mean:.4f} ± {level[a].half_width:.4f}", level[a].n,
              f"{gain[a].mean:+.4f} [{gain[a].low:+.4f}, {gain[a].high:+.4f}]" if a in gain else "baseline"]
             for a in sorted(cfg.activations, key=lambda a: level[a].mean)])
        metrics = {f"lm_val_loss_{a}": level[a].mean for a in cfg.activations}
        metrics.update({f"lm_params_{a}": runs[a][0]["params"] for a in cfg.activations})
        for a, iv in gain.items():
            metrics[f"lm_gain_{a}_mean"], metrics[f"lm_gain_{a}_ci_low"] = iv.mean, iv.low
        return Part(metrics, checks, [table], data=dict(runs=runs, level=level, gain=gain, cfg=cfg))

    return Plan([(lm_run, (ctx.artifacts, TinyLMConfig(**model, activation=a), cfg.train, s, train_ids, val_ids))
                 for a, s in jobs], finish)


# --- plots -------------------------------------------------------------------------------------------

def plot_functions(ctx: Context) -> None:
    import matplotlib.pyplot as plt

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


def plot_gradient_flow(ctx: Context, part: Part) -> None:
    import matplotlib.pyplot as plt

    cfg, (fig, ax) = part.data["cfg"], plt.subplots(figsize=(5.5, 3.8))
    for a, n in part.data["norms"].items():
        ax.semilogy(range(1, cfg.depth + 1), n, "o-", ms=3, label=f"{a} (rho={part.data['rates'][a].mean:.3f})")
    ax.set(xlabel="layer (1 = input side)", ylabel=r"$\|\partial L/\partial W_l\|$",
           title=f"Gradient norm per layer, {cfg.depth}-layer MLPs (mean of {cfg.seeds} seeds)")
    ax.legend(fontsize=8)
    ctx.save_figure(fig, "gradient-flow", f"Weight-gradient norm per layer through {cfg.depth}-layer stacks.")


def plot_dead_units(ctx: Context, part: Part) -> None:
    import matplotlib.pyplot as plt

    cfg, dead, keys = part.data["cfg"], part.data["dead"], part.data["keys"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.bar(range(len(keys)), [100 * dead[k].mean for k in keys], 0.6, capsize=3,
           yerr=[100 * dead[k].half_width if dead[k].n > 1 else 0.0 for k in keys],
           color=["C0" if lr == cfg.lrs[-1] else "C7" for _, lr in keys])
    ax.set_xticks(range(len(keys)), [f"{a}\nlr {lr:g}" for a, lr in keys], fontsize=8)
    ax.set(ylabel="dead hidden units (%)", title=f"Dead units after SGD on digits ({cfg.seeds} seeds, 95% CI)")
    ctx.save_figure(fig, "dead-units", "Fraction of hidden units with no gradient on any training image.")


def plot_lm(ctx: Context, part: Part) -> None:
    import matplotlib.pyplot as plt

    runs, gain, cfg = part.data["runs"], part.data["gain"], part.data["cfg"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for a, rs in runs.items():
        steps = [s for s, _ in rs[0]["curve"]]
        mean = [sum(r["curve"][i][1] for r in rs) / len(rs) for i in range(len(steps))]
        ax.plot(steps, mean, "o-", ms=3, label=f"{a} (final: {part.data['level'][a].mean:.3f})")
    ax.set(xlabel="step", ylabel="val loss on 1/4 of the batches", title=f"Tiny LM (mean of {cfg.seeds} seeds)")
    ax.legend()
    for i, (a, iv) in enumerate(gain.items()):
        bx.plot([i] * iv.n, [r["val_loss"] - q["val_loss"] for r, q in zip(runs["relu"], runs[a])], "o",
                color="grey", ms=4)
        if iv.n > 1:
            bx.errorbar([i + 0.15], [iv.mean], yerr=[[iv.mean - iv.low], [iv.high - iv.mean]], fmt="s", capsize=4)
    bx.axhline(0.0, color="k", lw=0.8)
    bx.set_xticks(range(len(gain)), list(gain))
    bx.set_xlim(-0.5, len(gain) - 0.5)
    bx.set(ylabel="loss(ReLU) - loss(X), nats/char", title="Paired by seed: each seed (grey), mean and 95% CI")
    ctx.save_figure(fig, "lm", "Validation loss of the character LM per FFN activation, and the paired gains.")


# --- the experiment ----------------------------------------------------------------------------------

class Activations(NoteExperiment):
    slug = "activations"
    single_threaded = True  # small models: one thread is faster and core-count independent

    def measure(self, ctx: Context) -> Result:
        flow_cfg, dead_cfg, lm_cfg = configs(ctx)
        plot_functions(ctx)
        flow = gradient_flow(flow_cfg, ctx.generator(1))
        plot_gradient_flow(ctx, flow)
        ctx.progress(0.1, "gradient flow; training the MLPs and LMs")
        # One pool for both trained parts, the LMs (slow) first; tiny runs here, with no pool to start.
        lm, dead = run_plans([lm_comparison(lm_cfg, ctx), dead_units(dead_cfg, *digits_features(), seed=ctx.seed)],
                             workers=ctx.pick(None, None, tiny=1))
        plot_dead_units(ctx, dead)
        plot_lm(ctx, lm)
        parts = [flow, dead, lm]
        return Result(metrics={k: v for p in parts for k, v in p.metrics.items()},
                      checks=[c for p in parts for c in p.checks], tables=[t for p in parts for t in p.tables],
                      summary=summary(flow, dead, lm))


def summary(flow: Part, dead: Part, lm: Part) -> str:
    rho, high, d = flow.data["rates"], dead.data["cfg"].lrs[-1], dead.data["dead"]
    return (f"Gradient rate per layer over {rho['relu'].n} seeds: sigmoid {rho['sigmoid'].mean:.3f}, ReLU "
            f"{rho['relu'].mean:.3f}, GELU {rho['gelu'].mean:.3f}; dead units at lr {high:g} over {d['relu', high].n} "
            f"seeds: ReLU {100 * d['relu', high].mean:.1f}%, leaky {100 * d['leaky_relu', high].mean:.1f}%, GELU "
            f"{100 * d['gelu', high].mean:.1f}%. LM val-loss gain over ReLU, paired over {lm.data['cfg'].seeds} "
            "seeds, mean [95% CI]: " + ", ".join(f"{NAME[a]} {iv.mean:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}]"
                                                   for a, iv in lm.data["gain"].items()) + " nats/char.")
