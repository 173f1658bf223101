"""medusa_generate (deepnotes.medusa.decode): greedy equivalence with transformers' generate, the masked tree
forward, cache compaction, stopping, and bad input."""
import pytest
import torch
from medusa_models import oracle_heads, successor_lm, tiny_gpt2, tiny_llama
from transformers import DynamicCache

from deepnotes.medusa import (MC_SIM_7B_63, MedusaModel, build_tree, chain, compact_cache, decode, medusa_generate,
                              medusa_generate_reference, single_node, tree_attention_mask)

TREES = {"single": single_node(), "chain": chain(4), "mc_sim_7b_63": list(MC_SIM_7B_63)}
BASES = {"llama": tiny_llama, "gpt2": tiny_gpt2}


@pytest.fixture(autouse=True, scope="module")
def deepnotes_attention():
    """Our own attention kernel as a transformers backend: it takes the same 4-D bool mask as sdpa."""
    from deepnotes.attention.hf import register

    register()


def prompt(length, vocab, seed=1):
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def greedy_reference(base, ids, max_new_tokens, eos_token_id=None):
    out = base.generate(ids, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                        pad_token_id=0)
    return out[0, ids.shape[1]:]


def check_accounting(result, depth, max_new_tokens):
    assert result.steps == len(result.accepted)
    assert sum(result.accepted) == result.tokens.numel() <= max_new_tokens
    assert all(1 <= a <= depth + 1 for a in result.accepted)


@pytest.fixture
def spy(monkeypatch):
    """Records each compaction's path, to see acceptances that need a gather (not a crop)."""
    paths = []

    def recording(cache, start, path):
        paths.append(list(path))
        return compact_cache(cache, start, path)

    monkeypatch.setattr(decode, "compact_cache", recording)
    return paths


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("tree", TREES)
def test_random_heads_equal_greedy(kind, tree, one_thread):
    base = BASES[kind](seed=5)
    model = MedusaModel(base, num_heads=4).eval()
    ids = prompt(6, 64)
    ref = greedy_reference(base, ids, 30)
    result = medusa_generate(model, ids, 30, choices=TREES[tree])
    assert torch.equal(result.tokens, ref)
    check_accounting(result, build_tree(TREES[tree]).depth, 30)


@pytest.mark.parametrize("kind, attn", [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa"), ("gpt2", "eager"),
                                        ("llama", "deepnotes")])
@pytest.mark.parametrize("tree", ["chain", "mc_sim_7b_63"])
def test_trained_like_heads_equal_greedy(kind, attn, tree, spy, one_thread):
    """Heads that know the base's successor structure: many candidates accepted, through gathered paths."""
    base, sigma = successor_lm(kind, seed=0, attn=attn, context=150.0 if kind == "llama" else 100.0)
    model = oracle_heads(MedusaModel(base, num_heads=4), sigma, noise=1.5).eval()
    ids = prompt(5, 48)
    ref = greedy_reference(base, ids, 48)
    result = medusa_generate(model, ids, 48, choices=TREES[tree])
    assert torch.equal(result.tokens, ref)
    check_accounting(result, 4, 48)
    assert max(result.accepted) >= 3 and result.steps <= 48 - 5  # acceptance really happened
    if tree == "mc_sim_7b_63":
        assert any(p != list(range(len(p))) for p in spy)  # nodes moved by the gather


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_heads_on_the_shared_lm_head_equal_greedy_and_the_reference_path(kind, one_thread):
    """MedusaModel(shared_projection=True): random blocks, proposals from one product with the base's lm_head;
    the output is still the base's greedy tokens, and the fast path equals the reference path."""
    base, sigma = successor_lm(kind, seed=0, context=150.0 if kind == "llama" else 100.0)
    model = MedusaModel(base, num_heads=4, shared_projection=True).eval()
    ids = prompt(5, 48)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for head in model.heads:
            head.blocks[0].linear.weight.normal_(0, 0.5, generator=g)
    ref = greedy_reference(base, ids, 40)
    for tree in (TREES["chain"], MC_SIM_7B_63):
        result = medusa_generate(model, ids, 40, choices=tree)
        assert torch.equal(result.tokens, ref)
        check_accounting(result, 4, 40)
    kwargs = dict(choices=MC_SIM_7B_63, acceptance="typical", temperature=0.7)
    fast, slow = medusa_generate(model, ids, 30, **kwargs), medusa_generate_reference(model, ids, 30, **kwargs)
    assert torch.equal(fast.tokens, slow.tokens) and fast.accepted == slow.accepted


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("acceptance, temperature", [("greedy", 0.0), ("typical", 0.7), ("typical", 1.5)])
def test_fast_path_equals_the_reference_path(kind, acceptance, temperature, one_thread):
    """Cache + tree mask + compaction + leaf-skipping logits == re-running every path from scratch."""
    base, sigma = successor_lm(kind, seed=2, context=150.0 if kind == "llama" else 100.0)
    model = oracle_heads(MedusaModel(base, num_heads=4), sigma, noise=1.5, seed=2).eval()
    ids = prompt(5, 48, seed=3)
    kwargs = dict(choices=MC_SIM_7B_63, acceptance=acceptance, temperature=temperature)
    fast = medusa_generate(model, ids, 30, **kwargs)
    slow = medusa_generate_reference(model, ids, 30, **kwargs)
    assert torch.equal(fast.tokens, slow.tokens) and fast.accepted == slow.accepted
    assert max(fast.accepted) >= 3
    if acceptance == "typical":  # the rule really differs from greedy here
        assert not torch.equal(fast.tokens, medusa_generate(model, ids, 30, choices=MC_SIM_7B_63).tokens)


def test_stops_at_eos_inside_an_accepted_path(one_thread):
    base, sigma = successor_lm("llama", seed=0, context=150.0)
    model = oracle_heads(MedusaModel(base, num_heads=4), sigma, noise=1.5).eval()
    ids = prompt(5, 48)
    free = medusa_generate(model, ids, 48, eos_token_id=[])
    ends = torch.tensor(free.accepted).cumsum(0).tolist()
    starts = [0] + ends[:-1]
    tokens = free.tokens.tolist()
    # a token strictly inside a multi-token step whose value has not appeared before
    j = next(i for s, e in zip(starts, ends) for i in range(s, e - 1) if e - s >= 3 and tokens[i] not in tokens[:i])
    eos = tokens[j]
    ref = greedy_reference(base, ids, 48, eos_token_id=eos)
    result = medusa_generate(model, ids, 48, eos_token_id=eos)
    assert torch.equal(result.tokens, ref) and result.tokens.tolist() == tokens[: j + 1]
    check_accounting(result, 4, 48)
    # None takes the base's generation_config, as generate does
    base.generation_config.eos_token_id = eos
    assert torch.equal(medusa_generate(model, ids, 48).tokens, ref)


def test_stops_at_max_new_tokens_inside_an_accepted_path(one_thread):
    base, sigma = successor_lm("gpt2", seed=0, context=100.0)
    model = oracle_heads(MedusaModel(base, num_heads=4), sigma, noise=1.5).eval()
    ids = prompt(5, 48)
    free = medusa_generate(model, ids, 40)
    cut = next(e - 1 for e, a in zip(torch.tensor(free.accepted).cumsum(0).tolist(), free.accepted) if a >= 2)
    result = medusa_generate(model, ids, cut)
    assert result.tokens.numel() == cut and torch.equal(result.tokens, greedy_reference(base, ids, cut))
    check_accounting(result, 4, cut)
    one = medusa_generate(model, ids, 1)
    assert one.tokens.tolist() == free.tokens[:1].tolist() and one.accepted == [1]


def test_typical_acceptance_runs_and_t0_is_greedy(one_thread):
    base, sigma = successor_lm("llama", seed=0, context=150.0)
    model = oracle_heads(MedusaModel(base, num_heads=4), sigma, noise=1.5).eval()
    ids = prompt(5, 48)
    greedy = medusa_generate(model, ids, 32)
    t0 = medusa_generate(model, ids, 32, acceptance="typical", temperature=0.0)
    assert torch.equal(t0.tokens, greedy.tokens) and t0.accepted == greedy.accepted
    typical = medusa_generate(model, ids, 32, acceptance="typical", temperature=0.7)
    check_accounting(typical, 4, 32)
    assert typical.tokens.numel() == 32 and typical.mean_accepted >= greedy.mean_accepted


def test_batch_rows_decode_independently(one_thread):
    base, sigma = successor_lm("llama", seed=0, context=150.0)
    model = oracle_heads(MedusaModel(base, num_heads=4), sigma, noise=1.5).eval()
    ids = torch.cat([prompt(5, 48, seed=1), prompt(5, 48, seed=2)])
    result = medusa_generate(model, ids, 20)
    for b in range(2):
        assert torch.equal(result.tokens[b], greedy_reference(base, ids[b:b + 1], 20))
        assert sum(result.accepted[b]) == 20 and result.steps[b] == len(result.accepted[b])


@pytest.mark.parametrize("kind, attn", [("llama", "eager"), ("llama", "sdpa"), ("gpt2", "eager"), ("gpt2", "sdpa"),
                                        ("llama", "deepnotes")])
def test_tree_forward_equals_each_path_as_a_sequence(kind, attn, one_thread):
    base = BASES[kind](seed=7, attn=attn)
    buffers = build_tree(MC_SIM_7B_63)
    n, S = buffers.num_nodes, 9
    ids = prompt(S, 64)
    tokens = torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(3))
    kind_mask = torch.float32 if attn == "eager" else torch.bool
    with torch.no_grad():
        cache = base(ids, use_cache=True).cache
        mask = tree_attention_mask(buffers, S, kind_mask)
        assert mask.shape == (1, 1, n, S + n)
        tree = base(tokens[None], attention_mask=mask, position_ids=(buffers.position_ids + S)[None], cache=cache,
                    use_cache=True).logits[0]
        parents = {}
        for row in buffers.retrieve_indices.tolist():
            path = [i for i in row if i >= 0]
            for d, node in enumerate(path):
                parents[node] = path[: d + 1]
        for node, path in parents.items():
            plain = base(torch.cat([ids[0], tokens[path]])[None]).logits[0, -1]
            torch.testing.assert_close(tree[node], plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_compacted_cache_equals_fresh_prefill(kind, one_thread):
    base = BASES[kind](seed=8)
    buffers = build_tree(MC_SIM_7B_63)
    n, S = buffers.num_nodes, 7
    ids = prompt(S, 64)
    tokens = torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(4))
    path = [i for i in buffers.retrieve_indices[17].tolist() if i >= 0][:3]
    assert path != list(range(3))
    nxt = torch.tensor([[5]])
    with torch.no_grad():
        cache = base(ids, use_cache=True).cache
        assert isinstance(cache, DynamicCache)
        base(tokens[None], attention_mask=tree_attention_mask(buffers, S), cache=cache,
             position_ids=(buffers.position_ids + S)[None], use_cache=True)
        compact_cache(cache, S, path)
        assert cache.get_seq_length() == S + len(path)
        after = base(nxt, cache=cache, use_cache=True).logits[0, -1]
        fresh = base(torch.cat([ids[0], tokens[path], nxt[0]])[None]).logits[0, -1]
    torch.testing.assert_close(after, fresh, rtol=0, atol=1e-5)


def test_bad_input_raises():
    base = tiny_llama(seed=0)
    model = MedusaModel(base, num_heads=2).eval()
    ids = prompt(4, 64)
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="max_new_tokens"):
            medusa_generate(model, ids, bad)
    with pytest.raises(ValueError, match="choices"):
        medusa_generate(model, ids, 4, choices=[(0, 0)])  # no parent
    with pytest.raises(ValueError, match="choices"):
        medusa_generate(model, ids, 4, choices=chain(3))  # deeper than the 2 heads
    with pytest.raises(ValueError, match="acceptance"):
        medusa_generate(model, ids, 4, acceptance="nucleus")
    with pytest.raises(ValueError, match="input_ids"):
        medusa_generate(model, ids[0], 4)
    with pytest.raises(ValueError, match="eos_token_id"):
        medusa_generate(model, ids, 4, eos_token_id=-1)
    with pytest.raises(TypeError, match="MedusaModel"):
        medusa_generate(base, ids, 4)
    assert medusa_generate(model, ids, 3).tokens.numel() == 3  # default tree cut to the 2 heads
