"""Tree buffers, the reference tree, greedy growth and hardware-aware selection (deepnotes.medusa.tree)."""
import itertools
import math

import pytest
import torch
from medusa_models import tiny_llama

from deepnotes.medusa import (MC_SIM_7B_63, MedusaModel, build_tree, chain, expected_accept_length, grow_tree,
                              head_rank_accuracy, measure_verify_cost, select_tree, single_node, tree_throughput)


def check_invariants(choices, buffers):
    nodes = [()] + sorted((tuple(c) for c in choices), key=lambda c: (len(c), c))
    n = len(nodes)
    mask = buffers.attn_mask
    assert mask.dtype == torch.bool and mask.shape == (n, n)
    assert mask[:, 0].all()  # everyone sees the root
    for i, ci in enumerate(nodes):
        for j, cj in enumerate(nodes):
            assert bool(mask[i, j]) == (ci[: len(cj)] == cj)  # itself and its ancestors only
    depth = torch.tensor([len(c) for c in nodes])
    assert torch.equal(mask.sum(1), depth + 1)
    assert torch.equal(buffers.position_ids, depth)
    assert torch.equal(mask, mask.tril())  # ancestors come before descendants
    on_path = set(buffers.retrieve_indices[buffers.retrieve_indices >= 0].tolist())
    assert on_path == set(range(n))  # every node lies on some root->leaf path
    for row in buffers.retrieve_indices.tolist():
        path = [i for i in row if i >= 0]
        assert row[len(path):] == [-1] * (len(row) - len(path))
        assert [len(nodes[i]) for i in path] == list(range(len(path)))  # root, then depth 1, 2, ...
        for a, b in zip(path, path[1:]):
            assert nodes[b][:-1] == nodes[a]
    for i, c in enumerate(nodes[1:], start=1):
        assert buffers.tree_indices[i] == 1 + buffers.topk * (len(c) - 1) + c[-1]
    assert buffers.tree_indices[0] == 0


def test_reference_tree_has_64_tokens_and_42_paths():
    b = build_tree(MC_SIM_7B_63)
    assert b.num_nodes == 64 and b.retrieve_indices.shape == (42, 5) and b.depth == 4 and b.topk == 10
    assert torch.bincount(b.position_ids).tolist() == [1, 10, 28, 23, 2]
    check_invariants(MC_SIM_7B_63, b)


@pytest.mark.parametrize("choices", [single_node(), chain(1), chain(5), [(0,), (1,), (2,), (0, 0), (2, 0), (2, 1)]])
def test_small_tree_invariants(choices):
    b = build_tree(choices)
    check_invariants(choices, b)
    assert b.num_nodes == len(choices) + 1


def test_single_node_and_chain_shapes():
    assert build_tree(single_node()).retrieve_indices.tolist() == [[0]]
    c = build_tree(chain(3))
    assert c.retrieve_indices.tolist() == [[0, 1, 2, 3]] and torch.equal(c.attn_mask, torch.ones(4, 4).tril().bool())


def test_order_of_choices_does_not_matter():
    shuffled = list(MC_SIM_7B_63)[::-1]
    a, b = build_tree(MC_SIM_7B_63), build_tree(shuffled)
    assert torch.equal(a.attn_mask, b.attn_mask) and torch.equal(a.tree_indices, b.tree_indices)


@pytest.mark.parametrize("bad, match", [([(0,), (0,)], "duplicate"), ([(0, 0)], "parent"),
                                        ([(1,), (1, 0, 0)], "parent"), ([()], "non-empty"), ([(-1,)], ">= 0"),
                                        ([(0.5,)], "ints"), ("01", "sequence"), ([0, 1], "tuple")])
def test_not_a_tree_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        build_tree(bad)
    with pytest.raises(ValueError, match="topk"):
        build_tree([(3,)], topk=3)


def all_paths(K, topk):
    return [p for d in range(1, K + 1) for p in itertools.product(range(topk), repeat=d)]


def test_grow_tree_takes_the_most_probable_paths():
    acc = torch.tensor([[0.6, 0.2, 0.1], [0.4, 0.25, 0.05], [0.3, 0.1, 0.05]], dtype=torch.float64)
    probs = sorted((math.prod(acc[k, r].item() for k, r in enumerate(p)) for p in all_paths(3, 3)), reverse=True)
    for budget in (0, 1, 5, 12, 39):
        tree = grow_tree(acc, budget)
        assert len(tree) == budget
        build_tree(tree)  # closed under prefixes
        # E[tau] - 1 of the greedy tree is the sum of the `budget` largest path probabilities: the optimum
        assert expected_accept_length(tree, acc) == pytest.approx(1 + sum(probs[:budget]), abs=1e-12)
    assert len(grow_tree(acc, 100)) == 39  # every path the table covers


def test_expected_accept_length_closed_forms():
    p = 0.7
    acc = torch.zeros(4, 2, dtype=torch.float64)
    acc[:, 0] = p
    assert expected_accept_length(chain(4), acc) == pytest.approx(sum(p ** d for d in range(5)))
    assert expected_accept_length(single_node(), acc) == 1.0
    perfect = torch.zeros(4, 10)
    perfect[:, 0] = 1
    assert grow_tree(perfect, 4) == chain(4)
    assert expected_accept_length(MC_SIM_7B_63, perfect) == 5.0
    with pytest.raises(ValueError, match="per-rank"):
        expected_accept_length(chain(2), torch.tensor([[0.5, 1.2], [0.5, 0.9]]))
    with pytest.raises(ValueError, match="num_heads, topk"):
        grow_tree(torch.ones(3), 2)
    with pytest.raises(ValueError, match="budget"):
        grow_tree(acc, -1)


def test_select_tree_maximises_tokens_per_time():
    perfect = torch.zeros(4, 10)
    perfect[:, 0] = 1
    trees = [single_node(), chain(4), list(MC_SIM_7B_63)]
    measured = {1: 1.0, 16: 1.4, 64: 3.0}  # interpolated at 5 tokens: 1 + 0.4 * 4 / 15
    assert select_tree(trees, perfect, measured) == chain(4)  # same E[tau] = 5 as the big tree, cheaper
    assert select_tree(trees, perfect, lambda q: 1.0) == chain(4)  # ties go to the first
    useless = torch.zeros(4, 10)
    assert select_tree(trees, useless, measured) == single_node()  # E[tau] = 1 everywhere: cheapest wins
    assert tree_throughput(chain(4), perfect, measured) == pytest.approx(5 / (1 + 0.4 * 4 / 15))
    acc = torch.tensor([[0.5, 0.2] + [0.0] * 8, [0.4, 0.2] + [0.0] * 8, [0.3, 0.1] + [0.0] * 8,
                        [0.2, 0.1] + [0.0] * 8])
    expected = max(trees, key=lambda t: expected_accept_length(t, acc) / {1: 1.0, 5: 1.0 + 0.4 * 4 / 15,
                                                                           64: 3.0}[len(t) + 1])
    assert select_tree(trees, acc, measured) == expected
    with pytest.raises(ValueError, match="trees"):
        select_tree([], acc, measured)
    # inter/extrapolation of measured costs: 2 tokens between 1 and 16, 100 beyond 64, a single point is flat
    assert tree_throughput(chain(1), perfect, measured) == pytest.approx(2 / (1 + 0.4 / 15))
    assert tree_throughput(grow_tree(perfect, 99), perfect, measured) == pytest.approx(5 / (3 + 1.6 * 36 / 48))
    assert tree_throughput(chain(3), perfect, {8: 2.0}) == pytest.approx(4 / 2.0)
    with pytest.raises(ValueError, match="cost"):
        tree_throughput(chain(3), perfect, {})


def test_head_rank_accuracy_counts_ranks():
    K, B, T, V = 2, 1, 6, 5
    ids = torch.tensor([[0, 1, 2, 3, 4, 0]])
    logits = torch.zeros(K, B, T, V)
    for t in range(T):
        if t + 2 < T:  # head 0 puts the true token t+2 first
            logits[0, 0, t, ids[0, t + 2]] = 2.0
        if t + 3 < T:  # head 1 puts it second
            logits[1, 0, t, ids[0, t + 3]] = 1.0
            logits[1, 0, t, (ids[0, t + 3] + 1) % V] = 2.0
    acc = head_rank_accuracy(logits, ids, topk=3)
    torch.testing.assert_close(acc, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64))


def test_measure_verify_cost_times_each_size(one_thread):
    model = MedusaModel(tiny_llama(seed=0), num_heads=1).eval()
    costs = measure_verify_cost(model, [1, 8], prefix_len=16, repeats=2, warmup=1)
    assert sorted(costs) == [1, 8] and all(v > 0 for v in costs.values())
    assert measure_verify_cost(model.base, [2], prefix_len=4, repeats=1, warmup=0)[2] > 0  # a plain causal LM too
    with pytest.raises(ValueError, match="sizes"):
        measure_verify_cost(model, [0])
