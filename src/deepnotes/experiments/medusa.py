r"""Note 12: Medusa heads, tree verification, greedy and typical acceptance, against transformers' peers.

A code LM (deepnotes.lm: a LlamaForCausalLM trained here on the standard library) gets K = 4
Medusa heads trained by Medusa-1 (frozen base) on self-distilled data: the base's own greedy
continuations of train-split prompts, which under greedy decoding is exactly what the heads
must predict. Head k's per-rank accuracy a[k, r] on validation continuations grows the trees
(16, 32, 64 tokens; tree.grow_tree) and, with the time of a whole Medusa step measured on this
machine for each tree on validation prompts (step_costs), selects the one with the most expected
tokens per second (tree.select_tree); one verification forward of q tree tokens ÷ one plain
forward (tree.measure_verify_cost) is reported as the per-step overhead. On prompts from the test split, batch 1, the same max_new_tokens:

* plain greedy with a KV cache: ``base.generate(do_sample=False)``;
* prompt-lookup decoding: ``generate(prompt_lookup_num_tokens=10)``;
* assisted decoding with the draft LM (same recipe, smaller): ``generate(assistant_model=draft)``;
* Medusa: ``medusa_generate`` at each tree size, greedy and typical (ε 0.09, δ 0.3, T 0.7).

Accepted tokens per step: new tokens ÷ target-model forwards (transformers' methods, counted
by a hook on the backbone; the bonus token is counted since each forward emits it), and new
tokens ÷ verification steps for Medusa (its prefill is not a step: the paper's τ). Wall clock:
all methods interleaved within each repeat, median per prompt; the speedup over plain greedy is
decided by the 95% t-interval over prompts of the per-prompt tokens/s ratio. Quality proxy:
the base model's perplexity of each method's continuation given its prompt.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import replace

import torch

from .base import Check, Context, NoteExperiment, Result, Table
from .stats import mean_ci

__all__ = ["Medusa", "SCALE_SETTINGS", "SHARED", "setup", "split_prompts", "step_costs", "methods", "run_methods",
           "continuation_perplexity", "ForwardCounter", "TREE_SIZES", "TYPICAL"]

TREE_SIZES = (16, 32, 64)  # tree tokens, the root included
SHARED = "medusa-shared"  # the benchmark's methods with MedusaModel(shared_projection=True)
TYPICAL = {"posterior_threshold": 0.09, "posterior_alpha": 0.3, "temperature": 0.7}
PROMPT_LOOKUP_TOKENS = 10  # transformers' documented example value; max_matching_ngram_size stays at its 2
# per scale: the LM preset, the heads' recipe, the prompts and timing
SCALE_SETTINGS = {
    "tiny": dict(heads=dict(steps=8, batch_size=4, block_size=24, warmup=2, distill_sequences=8, distill_prompt=8,
                            val_sequences=4), lm_chars=40_000, prompts=2, prompt_tokens=8, new_tokens=10, repeats=1),
    "quick": dict(heads=dict(steps=80, batch_size=8, block_size=64, warmup=8, distill_sequences=128,
                             distill_prompt=16, val_sequences=16, lr=2e-3), lm_chars=300_000, prompts=5,
                  prompt_tokens=32, new_tokens=48, repeats=3, fewer={"assisted": 1}),
    "full": dict(heads=dict(steps=300, batch_size=8, block_size=128, warmup=30, distill_sequences=512,
                            distill_prompt=16, val_sequences=48, lr=2e-3), lm_chars=1_000_000, prompts=8,
                 prompt_tokens=48, new_tokens=96, repeats=3),
}

def _lm_entry(store, scale: str, role: str, seed: int) -> bool:
    """Trains (or finds) one code LM in `store`, in a worker process; True when it was already there."""
    from ..lm.model import LMTraining, trained_lm

    hits = store.hits
    trained_lm(store, LMTraining.preset(scale, role, seed=seed))
    return store.hits > hits


def setup(store, scale: str, seed: int = 0, workers: int | None = None, shared: bool = False) -> dict:
    """Base and draft LMs (deepnotes.lm.trained_lm), heads (trained_medusa), trees: all through `store`.
    ``shared`` also trains heads on the base's own lm_head (MedusaModel(shared_projection=True)): the
    benchmark's variant, under the keys medusa_shared, shared_info, rank_shared and trees_shared.

    The two LMs are independent: with the store enabled they train side by side, one process per
    core (``workers``; 1: here, one after the other), and are then loaded from the store here.
    """
    from ..lm.model import LMTraining, trained_lm
    from ..lm.splits import code_documents
    from ..lm.tokenizer import encode_documents
    from ..medusa.train import MedusaTraining, trained_medusa
    from ..medusa.tree import grow_tree
    from .parallel import map_runs

    s = SCALE_SETTINGS[scale]
    t0 = time.perf_counter()
    if store.enabled:
        before = store.counts()
        loaded = map_runs(_lm_entry, [(store, scale, role, seed) for role in ("base", "draft")], workers=workers)
        store.add_counts(before, loaded)
    base, tok, lm_info = trained_lm(store, LMTraining.preset(scale, "base", seed=seed))
    draft, _, draft_info = trained_lm(store, LMTraining.preset(scale, "draft", seed=seed))
    t_lm = time.perf_counter() - t0
    train_ids = encode_documents(tok, code_documents("train", s["lm_chars"]))
    val_ids = encode_documents(tok, code_documents("validation", s["lm_chars"] // 5))
    cfg = MedusaTraining(num_heads=4, self_distill=True, seed=seed, **s["heads"])
    model, info = trained_medusa(store, base, cfg, train_ids, val_ids)
    rank = torch.tensor(info["val"]["rank"], dtype=torch.float64)
    trees = {size: grow_tree(rank, size - 1) for size in TREE_SIZES}
    out = {"base": base, "draft": draft, "tokenizer": tok, "medusa": model, "heads_info": info, "lm_info": lm_info,
           "draft_info": draft_info, "trees": trees, "rank": rank, "training": cfg}
    if shared:
        out["medusa_shared"], out["shared_info"] = trained_medusa(store, base, replace(cfg, shared_projection=True),
                                                                  train_ids, val_ids)
        out["rank_shared"] = torch.tensor(out["shared_info"]["val"]["rank"], dtype=torch.float64)
        out["trees_shared"] = {size: grow_tree(out["rank_shared"], size - 1) for size in TREE_SIZES}
    out["seconds"] = {"lm": t_lm, "heads": time.perf_counter() - t0 - t_lm}
    return out


def split_prompts(tokenizer, split: str, n: int, prompt_tokens: int, max_chars: int = 200_000) -> list[torch.Tensor]:
    """n prompts of prompt_tokens tokens, (1, S) each, at evenly spaced offsets of a split's token stream."""
    from ..lm.splits import code_documents
    from ..lm.tokenizer import encode_documents

    ids = encode_documents(tokenizer, code_documents(split, max_chars))
    stride = (ids.numel() - prompt_tokens) // n
    return [ids[i * stride: i * stride + prompt_tokens].unsqueeze(0) for i in range(n)]


class ForwardCounter:
    """Counts forward calls of a module (the target model's backbone) while active."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.calls, self._handle = module, 0, None

    def __enter__(self):
        self.calls = 0
        self._handle = self.module.register_forward_hook(lambda *a: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def methods(m: dict, new_tokens: int) -> dict:
    """name -> fn(prompt (1, S)) -> (new tokens, steps, accepted per step or None) for every method compared."""
    from ..medusa.decode import medusa_generate

    base, draft, model = m["base"], m["draft"], m["medusa"]
    backbone = base.base_model

    def hf(**kw):
        def run(p):
            with ForwardCounter(backbone) as c:
                out = base.generate(p, attention_mask=torch.ones_like(p), do_sample=False, max_new_tokens=new_tokens,
                                    **kw)
            return out[0, p.shape[1]:].tolist(), c.calls, None
        return run

    def medusa(size, rule, heads=model, trees=m["trees"]):
        kw = TYPICAL if rule == "typical" else {}

        def run(p):
            res = medusa_generate(heads, p, new_tokens, choices=trees[size], acceptance=rule, **kw)
            return res.tokens.tolist(), res.steps, res.accepted
        return run

    out = {"greedy": hf(), "prompt lookup": hf(prompt_lookup_num_tokens=PROMPT_LOOKUP_TOKENS),
           "assisted": hf(assistant_model=draft)}
    for size in TREE_SIZES:
        for rule in ("greedy", "typical"):
            out[f"medusa {size} {rule}"] = medusa(size, rule)
    if "medusa_shared" in m:  # setup(shared=True): the heads on the base's lm_head, greedy
        for size in TREE_SIZES:
            out[f"{SHARED} {size} greedy"] = medusa(size, "greedy", m["medusa_shared"], m["trees_shared"])
    return out


@torch.no_grad()
def run_methods(fns: dict, prompts: list, repeats: int, warmup: int = 1, fewer: dict | None = None) -> dict:
    """Per method: tokens, steps and accepted lengths per prompt (first run), and the median seconds per prompt
    over `repeats` runs, the methods taking turns within each repeat; ``fewer`` = {method: repeats} times a
    slow baseline fewer times."""
    fewer = fewer or {}
    for fn in fns.values():
        for _ in range(warmup):
            fn(prompts[0])
    res = {k: {"tokens": [], "steps": [], "accepted": [], "seconds": []} for k in fns}
    for p in prompts:
        times = {k: [] for k in fns}
        for r in range(repeats):
            for k, fn in fns.items():
                if r >= fewer.get(k, repeats):
                    continue
                t0 = time.perf_counter()
                tokens, steps, accepted = fn(p)
                times[k].append(time.perf_counter() - t0)
                if r == 0:
                    res[k]["tokens"].append(tokens)
                    res[k]["steps"].append(steps)
                    res[k]["accepted"].extend(accepted or [])
        for k in fns:
            res[k]["seconds"].append(statistics.median(times[k]))
    return res


def step_costs(model, trees: dict, prompts: list, new_tokens: int) -> dict[int, float]:
    """{tree size: median seconds per medusa_generate step} over calibration prompts, after one warm-up.

    The whole step is timed (proposals, the verification forward, acceptance, cache compaction),
    not the forward alone: on a CPU at these sizes the per-node work around the forward grows with
    the tree as well, and select_tree should weigh what a step really costs.
    """
    from ..medusa.decode import medusa_generate

    out = {}
    for q, choices in trees.items():
        medusa_generate(model, prompts[0], new_tokens, choices=choices)
        per_step = []
        for p in prompts:
            t0 = time.perf_counter()
            res = medusa_generate(model, p, new_tokens, choices=choices)
            per_step.append((time.perf_counter() - t0) / res.steps)
        out[q] = statistics.median(per_step)
    return out


@torch.no_grad()
def continuation_perplexity(base, prompt: torch.Tensor, tokens: list) -> float:
    """exp(mean −log p_base(x_i | prompt, x_<i)) over the continuation `tokens`."""
    if not tokens:
        return math.nan
    ids = torch.cat([prompt[0], torch.tensor(tokens, dtype=torch.long)]).unsqueeze(0)
    logp = base(input_ids=ids, use_cache=False).logits[0, :-1].float().log_softmax(-1)
    S = prompt.shape[1]
    picked = logp[S - 1:].gather(-1, ids[0, S:].unsqueeze(-1))
    return float(torch.exp(-picked.mean()))


def _plot_histogram(ctx: Context, accepted: dict) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4), constrained_layout=True)
    top = max(max(v) for v in accepted.values() if v)
    bins = [x + 0.5 for x in range(top + 1)]
    for name, values in accepted.items():
        ax.hist(values, bins=bins, alpha=0.55, label=f"{name} (mean {statistics.fmean(values):.2f})", density=True)
    ax.set(xlabel="tokens accepted in one step (bonus counted)", ylabel="fraction of steps",
           title="Medusa acceptance length")
    ax.legend(fontsize=8)
    ctx.save_figure(fig, "acceptance", "Accepted length per verification step over the test prompts, chosen tree.")


def _plot_speedup(ctx: Context, rows: list) -> None:
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
    for rule, style in (("greedy", "o-"), ("typical", "s--")):
        sel = [r for r in rows if r["rule"] == rule]
        a.plot([r["size"] for r in sel], [r["speedup"] for r in sel], style, label=rule)
        b.plot([r["size"] for r in sel], [r["tau"] for r in sel], style, label=f"{rule}: accepted / step")
    g = [r for r in rows if r["rule"] == "greedy"]
    b.plot([r["size"] for r in g], [r["overhead"] for r in g], "k:", label="verification forward ÷ one plain forward")
    b.plot([r["size"] for r in g], [r["step_overhead"] for r in g], "k-.",
           label="whole Medusa step ÷ one greedy token")
    a.axhline(1.0, color="k", lw=0.8)
    a.set(xscale="log", xlabel="tree tokens", ylabel="tokens/s ÷ plain greedy", title="wall-clock speedup")
    b.set(xscale="log", xlabel="tree tokens", title="acceptance vs per-step cost")
    for ax in (a, b):
        ax.minorticks_off()
        ax.set_xticks(list(TREE_SIZES), [str(s) for s in TREE_SIZES])
        ax.legend(fontsize=8)
    ctx.save_figure(fig, "speedup", "Speedup = accepted tokens per step ÷ relative cost of a step, measured.")


class Medusa(NoteExperiment):
    slug = "medusa"
    single_threaded = True  # small models: one thread is faster and core-count independent

    def measure(self, ctx: Context) -> Result:
        from ..medusa.tree import expected_accept_length, measure_verify_cost, select_tree

        s = SCALE_SETTINGS[ctx.scale]
        t_start = time.perf_counter()
        ctx.progress(0.0, "language models and heads")
        m = setup(ctx.artifacts, ctx.scale, ctx.seed, workers=ctx.pick(None, None, tiny=1))
        model, base, rank = m["medusa"], m["base"], m["rank"]
        ctx.progress(0.5, "verification cost")
        costs = measure_verify_cost(model, (1, *TREE_SIZES), prefix_len=s["prompt_tokens"] + s["new_tokens"] // 2)
        calibration = split_prompts(m["tokenizer"], "validation", 2, s["prompt_tokens"])
        per_step = step_costs(model, m["trees"], calibration, s["new_tokens"])
        chosen = select_tree([m["trees"][q] for q in TREE_SIZES], rank, per_step)
        size = len(chosen) + 1
        prompts = split_prompts(m["tokenizer"], "test", s["prompts"], s["prompt_tokens"])
        ctx.progress(0.6, "decoding")
        res = run_methods(methods(m, s["new_tokens"]), prompts, s["repeats"], fewer=s.get("fewer"))
        t_measure = time.perf_counter() - t_start

        def tps(k):  # tokens per second of each prompt
            return [len(t) / sec for t, sec in zip(res[k]["tokens"], res[k]["seconds"])]

        def tau(k):
            return sum(len(t) for t in res[k]["tokens"]) / sum(res[k]["steps"])

        def pooled_tps(k):
            return sum(len(t) for t in res[k]["tokens"]) / sum(res[k]["seconds"])

        greedy_tokens = res["greedy"]["tokens"]
        mismatched = {q: sum(a != b for a, b in zip(res[f"medusa {q} greedy"]["tokens"], greedy_tokens))
                      for q in TREE_SIZES}
        best = f"medusa {size} greedy"
        ratio = mean_ci([a / b for a, b in zip(tps(best), tps("greedy"))], statistic="per-prompt tokens/s ratio")
        ppl = {k: statistics.fmean(continuation_perplexity(base, p, t) for p, t in zip(prompts, res[k]["tokens"]))
               for k in res}
        acc = m["heads_info"]["val"]
        metrics = {f"head{k}_top1": a for k, a in enumerate(acc["top1"])}
        metrics.update({f"head{k}_top5": a for k, a in enumerate(acc["top5"])})
        metrics.update(chosen_tree=size, accepted_per_step=tau(best), speedup=pooled_tps(best) / pooled_tps("greedy"),
                       speedup_per_prompt_mean=ratio.mean, speedup_ci_low=ratio.low, speedup_ci_high=ratio.high,
                       greedy_mismatches=sum(mismatched.values()), tokens_per_s_greedy=pooled_tps("greedy"),
                       expected_accepted=expected_accept_length(chosen, rank),
                       base_test_perplexity=m["lm_info"]["test_perplexity"],
                       seconds_lm=m["seconds"]["lm"], seconds_heads=m["seconds"]["heads"], seconds_total=t_measure)
        for k, key in (("prompt lookup", "prompt_lookup"), ("assisted", "assisted")):
            metrics[f"speedup_{key}"] = pooled_tps(k) / pooled_tps("greedy")
            metrics[f"accepted_per_step_{key}"] = tau(k)
            metrics[f"medusa_over_{key}"] = pooled_tps(best) / pooled_tps(k)
        metrics["accepted_per_step_typical"] = tau(f"medusa {size} typical")
        metrics.update({f"overhead_{q}": costs[q] / costs[1] for q in TREE_SIZES})
        metrics.update({f"step_ms_{q}": 1e3 * per_step[q] for q in TREE_SIZES})
        # a whole Medusa step against one token of transformers' greedy loop: speedup ≈ τ ÷ this
        metrics.update({f"step_overhead_{q}": per_step[q] * pooled_tps("greedy") for q in TREE_SIZES})

        checks = [
            Check(f"greedy Medusa output equals plain greedy (transformers generate) on every prompt, trees "
                  f"{'/'.join(map(str, TREE_SIZES))}: mismatching prompts", metrics["greedy_mismatches"], "<=", 0,
                  label="greedy mismatches"),
            Check(f"mean accepted tokens per verification step (bonus counted), chosen tree of {size}, greedy > 2",
                  metrics["accepted_per_step"], ">", 2.0, label="accepted/step"),
            Check.ci_above(f"wall-clock tokens/s of Medusa (tree {size}, greedy) ÷ plain greedy, 95% CI over "
                           f"{len(prompts)} prompts, low end > 1", ratio, 1.0, label="speedup CI low"),
        ]
        head_rows = [[k, f"t+{k + 2}", f"{a1:.3f}", f"{a5:.3f}"] for k, (a1, a5) in enumerate(zip(acc["top1"],
                                                                                                    acc["top5"]))]
        table_rows, plot_rows = [], []
        for k in res:
            speed = pooled_tps(k) / pooled_tps("greedy")
            same = "—" if k == "greedy" else ("yes" if res[k]["tokens"] == greedy_tokens else
                                              f"no ({sum(a != b for a, b in zip(res[k]['tokens'], greedy_tokens))})")
            table_rows.append([k, f"{pooled_tps(k):.1f}", f"{tau(k):.2f}", f"{speed:.2f}x", f"{ppl[k]:.2f}", same])
            if k.startswith("medusa"):
                q, rule = int(k.split()[1]), k.split()[2]
                plot_rows.append({"size": q, "rule": rule, "speedup": speed, "tau": tau(k),
                                  "overhead": costs[q] / costs[1], "step_overhead": metrics[f"step_overhead_{q}"]})
        tables = [
            Table("Per-head accuracy on self-distilled validation continuations",
                  ["head", "predicts", "top-1", "top-5"], head_rows),
            Table(f"Decoding {len(prompts)} test prompts of {s['prompt_tokens']} tokens, {s['new_tokens']} new tokens, "
                  f"batch 1, median of {s['repeats']}; accepted/step counts the bonus token",
                  ["method", "tokens/s", "accepted/step", "vs greedy", "base ppl of output", "= greedy output"],
                  table_rows),
            Table("Verification forward of q tree tokens ÷ one plain decoding step, and a whole Medusa step "
                  "(validation prompts; what select_tree weighs)", ["q", "forward ms", "÷ plain step", "step ms"],
                  [[q, f"{c:.2f}", f"{c / costs[1]:.2f}", f"{1e3 * per_step[q]:.2f}" if q in per_step else "—"]
                   for q, c in costs.items()]),
        ]
        ctx.progress(0.95, "plots")
        _plot_histogram(ctx, {f"{rule}, tree {size}": res[f"medusa {size} {rule}"]["accepted"]
                              for rule in ("greedy", "typical")})
        _plot_speedup(ctx, plot_rows)
        summary = (f"Heads top-1 {', '.join(f'{a:.2f}' for a in acc['top1'])}; tree {size} accepts "
                   f"{metrics['accepted_per_step']:.2f} tokens/step "
                   f"(typical {metrics['accepted_per_step_typical']:.2f}), {metrics['speedup']:.2f}x plain greedy's "
                   f"tokens/s (per prompt 95% CI [{ratio.low:.2f}, {ratio.high:.2f}]) "
                   f"(prompt lookup {metrics['speedup_prompt_lookup']:.2f}x, "
                   f"assisted {metrics['speedup_assisted']:.2f}x); greedy output identical on "
                   f"{len(prompts) - mismatched[size]}/{len(prompts)} prompts.")
        return Result(metrics=metrics, checks=checks, tables=tables, summary=summary)
