"""Note 12 experiment: tiny-scale wiring (verdicts mean nothing there) and its helpers."""
import torch

from deepnotes.experiments import medusa as experiment
from deepnotes.experiments.medusa import SHARED, TREE_SIZES, ForwardCounter, continuation_perplexity, setup


def test_tiny_run_is_wired(run_tiny):
    result, ctx = run_tiny("medusa")
    assert [c.label for c in result.checks] == ["greedy mismatches", "accepted/step", "speedup CI low"]
    assert result.checks[0].passed  # greedy equivalence holds at any scale
    assert [c.threshold for c in result.checks] == [0.0, 2.0, 1.0]
    assert sorted(f.name for f in ctx.figures) == ["acceptance", "speedup"]
    assert ctx.artifacts.trained == 3  # base LM, draft LM, heads
    for key in ("head0_top1", "head3_top5", "speedup_prompt_lookup", "speedup_assisted", "accepted_per_step_typical",
                *(f"overhead_{q}" for q in TREE_SIZES)):
        assert key in result.metrics
    methods = [row[0] for row in result.tables[1].rows]
    assert methods[:3] == ["greedy", "prompt lookup", "assisted"] and len(methods) == 3 + 2 * len(TREE_SIZES)
    hits = ctx.artifacts.hits
    setup(ctx.artifacts, "tiny", seed=0, workers=1)  # the same store again: base, draft and heads load
    assert ctx.artifacts.hits >= hits + 3 and ctx.artifacts.trained == 3  # nothing retrains
    m = setup(ctx.artifacts, "tiny", seed=0, workers=1, shared=True)  # the benchmark's variant: one more head set
    assert ctx.artifacts.trained == 4 and m["medusa_shared"].shared_projection
    fns = experiment.methods(m, 6)
    prompt = torch.tensor([[5, 6, 7, 8]])
    greedy = fns["greedy"](prompt)[0]
    for q in TREE_SIZES:
        assert fns[f"{SHARED} {q} greedy"](prompt)[0] == greedy


def test_forward_counter_and_continuation_perplexity():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2)).eval()
    prompt = torch.tensor([[1, 2, 3]])
    with ForwardCounter(base.model) as c:
        out = base.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=4,
                            min_new_tokens=4)
    assert c.calls == 4  # greedy with a cache: one forward per new token
    tokens = out[0, 3:].tolist()
    with torch.no_grad():
        logp = base(out).logits[0].log_softmax(-1)
    expect = torch.exp(-torch.stack([logp[2 + i, t] for i, t in enumerate(tokens)]).mean())
    assert abs(continuation_perplexity(base, prompt, tokens) - float(expect)) < 1e-5


def test_run_methods_interleaves_and_times_slow_baselines_fewer_times():
    from deepnotes.experiments.medusa import run_methods

    calls = []

    def fn(name):
        def run(p):
            calls.append((name, int(p)))
            return [1, 2, 3], 2, ([2, 1] if name == "m" else None)
        return run

    res = run_methods({"g": fn("g"), "m": fn("m"), "slow": fn("slow")}, [0, 1], repeats=3, fewer={"slow": 1})
    assert calls[:3] == [("g", 0), ("m", 0), ("slow", 0)]  # one warm-up each
    assert calls[3:9] == [("g", 0), ("m", 0), ("slow", 0), ("g", 0), ("m", 0), ("g", 0)]
    assert sum(1 for c in calls if c[0] == "slow") == 3  # warm-up + one round per prompt
    assert res["m"]["tokens"] == [[1, 2, 3], [1, 2, 3]] and res["m"]["steps"] == [2, 2]
    assert res["m"]["accepted"] == [2, 1, 2, 1] and res["g"]["accepted"] == []
    assert len(res["slow"]["seconds"]) == 2
