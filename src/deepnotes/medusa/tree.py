r"""Candidate trees for Medusa verification: buffers, the reference tree, growth and selection.

A tree is a set of *choices*, rank paths c = (r₁, …, r_d): the node whose token is the r₁-th
proposal of head 0, then the r₂-th of head 1, and so on. The root (the base's own next token)
is node 0; the other nodes are the choices sorted by (depth, ranks). Over the n = |choices| + 1
nodes ``build_tree`` precomputes (Medusa's ``generate_medusa_buffers``):

    attn_mask[i, j]      = j is i or an ancestor of i                 (n, n) bool, column 0 all True
    tree_indices[i]      = 1 + topk·(d_i − 1) + r_i  (root: 0)         into [root, head₀ top-k, head₁ top-k, …]
    position_ids[i]      = d_i (depth; root 0)                         offsets from the cache length
    retrieve_indices[p]  = node ids on the root→leaf path p, padded with −1 to depth+1

Choosing a tree (§3.3.2 of the paper): with a[k, r] = P(the rank-r proposal of head k is the
true token t+k+2), and heads treated as independent, a node c is accepted with probability
Π_k a[k, c_k], so the expected number of tokens a step emits is

    E[τ](T) = 1 + Σ_{c ∈ T} Π_{k=1}^{|c|} a[k−1, c_k].

A child's product never exceeds its parent's, so adding nodes greedily by that product keeps the
tree closed under prefixes and maximises E[τ] for every budget (``grow_tree``). On real hardware
a step over q tree tokens costs c(q), so ``select_tree`` maximises E[τ](T) / c(|T|+1), tokens per
unit time, with c measured on this machine by ``measure_verify_cost``.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from .heads import backbone_forward

__all__ = ["TreeBuffers", "build_tree", "validate_choices", "MC_SIM_7B_63", "chain", "single_node", "grow_tree",
           "expected_accept_length", "head_rank_accuracy", "tree_throughput", "select_tree",
           "measure_verify_cost"]

# The reference's mc_sim_7b_63 (FasterDecoding/Medusa, medusa/model/medusa_choices.py): 63 choices for
# 4 heads (10/28/23/2 nodes at depths 1-4), 64 tokens with the root, 42 leaves.
MC_SIM_7B_63: tuple[tuple[int, ...], ...] = tuple(tuple(c) for c in [
    [0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0], [0, 2], [3], [0, 3], [4], [0, 4], [2, 0], [0, 5],
    [0, 0, 1], [5], [0, 6], [6], [0, 7], [0, 1, 0], [1, 1], [7], [0, 8], [0, 0, 2], [3, 0], [0, 9], [8], [9],
    [1, 0, 0], [0, 2, 0], [1, 2], [0, 0, 3], [4, 0], [2, 1], [0, 0, 4], [0, 0, 5], [0, 0, 0, 0], [0, 1, 1],
    [0, 0, 6], [0, 3, 0], [5, 0], [1, 3], [0, 0, 7], [0, 0, 8], [0, 0, 9], [6, 0], [0, 4, 0], [1, 4], [7, 0],
    [0, 1, 2], [2, 0, 0], [3, 1], [2, 2], [8, 0], [0, 5, 0], [1, 5], [1, 0, 1], [0, 2, 1], [9, 0], [0, 6, 0],
    [0, 0, 0, 1], [1, 6], [0, 7, 0]])


@dataclass(frozen=True)
class TreeBuffers:
    attn_mask: torch.Tensor  # (n, n) bool, True where node i may attend to node j (itself and its ancestors)
    tree_indices: torch.Tensor  # (n,) long, index into [root, head_0 top-k, ..., head_{K-1} top-k]
    position_ids: torch.Tensor  # (n,) long, depth of each node (root 0)
    retrieve_indices: torch.Tensor  # (P, depth+1) long, node ids root->leaf, padded with -1
    choices: tuple[tuple[int, ...], ...] = ()  # the sorted choices, node i = choices[i-1]
    topk: int = 1  # proposals kept per head (largest rank + 1)

    @property
    def num_nodes(self) -> int:
        return self.attn_mask.shape[0]

    @property
    def depth(self) -> int:
        """Number of heads the tree needs (longest choice)."""
        return self.retrieve_indices.shape[1] - 1

    def to(self, device) -> "TreeBuffers":
        return TreeBuffers(self.attn_mask.to(device), self.tree_indices.to(device), self.position_ids.to(device),
                           self.retrieve_indices.to(device), self.choices, self.topk)


def validate_choices(choices, name: str = "choices") -> tuple[tuple[int, ...], ...]:
    """Check that ``choices`` is a tree (rank paths, no duplicates, every parent present); sort by (depth, ranks)."""
    if isinstance(choices, (str, bytes)) or not hasattr(choices, "__iter__"):
        raise ValueError(f"{name}: expected a sequence of rank paths such as [(0,), (1,), (0, 0)], got {choices!r}")
    paths = []
    for c in choices:
        if isinstance(c, (str, bytes)) or not hasattr(c, "__iter__"):
            raise ValueError(f"{name}: expected each choice to be a tuple of ranks, got {c!r}")
        c = tuple(c)
        if len(c) == 0 or any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in c):
            raise ValueError(f"{name}: expected each choice to be a non-empty tuple of ints >= 0, got {c!r}")
        paths.append(c)
    seen = set()
    for c in paths:
        if c in seen:
            raise ValueError(f"{name}: not a tree, duplicate choice {c}")
        seen.add(c)
    for c in paths:
        if len(c) > 1 and c[:-1] not in seen:
            raise ValueError(f"{name}: not a tree, choice {c} has no parent {c[:-1]}")
    return tuple(sorted(paths, key=lambda c: (len(c), c)))


def build_tree(choices, topk: int | None = None) -> TreeBuffers:
    """Rank paths -> TreeBuffers over n = len(choices) + 1 nodes (root first).

    ``topk`` is the stride of tree_indices (proposals taken per head); default largest rank + 1.
    """
    nodes = validate_choices(choices)
    max_rank = max((r for c in nodes for r in c), default=-1)
    if topk is None:
        topk = max(max_rank + 1, 1)
    elif isinstance(topk, bool) or not isinstance(topk, int) or topk <= max_rank:
        raise ValueError(f"topk: expected an int > the largest rank {max_rank}, got {topk!r}")
    n = len(nodes) + 1
    index = {c: i + 1 for i, c in enumerate(nodes)}
    index[()] = 0
    attn_mask = torch.eye(n, dtype=torch.bool)
    attn_mask[:, 0] = True
    tree_indices = torch.zeros(n, dtype=torch.long)
    position_ids = torch.zeros(n, dtype=torch.long)
    for c, i in index.items():
        if not c:
            continue
        for d in range(1, len(c)):
            attn_mask[i, index[c[:d]]] = True
        tree_indices[i] = 1 + topk * (len(c) - 1) + c[-1]
        position_ids[i] = len(c)
    parents = {c[:-1] for c in nodes}
    leaves = [c for c in ((),) + nodes if c not in parents]
    depth = max((len(c) for c in nodes), default=0)
    retrieve = torch.full((len(leaves), depth + 1), -1, dtype=torch.long)
    for p, leaf in enumerate(leaves):
        for d in range(len(leaf) + 1):
            retrieve[p, d] = index[leaf[:d]]
    return TreeBuffers(attn_mask, tree_indices, position_ids, retrieve, nodes, topk)


def chain(depth: int) -> list[tuple[int, ...]]:
    """The top-1 chain (0,), (0, 0), ..., of ``depth`` nodes below the root (depth+1 tokens)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"depth: expected an int >= 0, got {depth!r}")
    return [(0,) * d for d in range(1, depth + 1)]


def single_node() -> list[tuple[int, ...]]:
    """The root alone: Medusa degenerates to plain greedy decoding, one token per step."""
    return []


def _check_accuracy(acc) -> torch.Tensor:
    acc = torch.as_tensor(acc, dtype=torch.float64)
    if acc.dim() != 2 or acc.numel() == 0:
        raise ValueError(f"head_topk_accuracy: expected a (num_heads, topk) tensor, got shape {tuple(acc.shape)}")
    # rows of true per-rank hit rates sum to <= 1 (ranks exclusive); growth works for any weights in [0, 1]
    if not torch.isfinite(acc).all() or (acc < 0).any() or (acc > 1).any():
        raise ValueError(f"head_topk_accuracy: expected per-rank probabilities a[k, r] in [0, 1], got values in "
                         f"[{acc.min().item():.3g}, {acc.max().item():.3g}]")
    return acc


def _path_probability(c: Sequence[int], acc: torch.Tensor) -> float:
    if len(c) > acc.shape[0] or max(c) >= acc.shape[1]:
        return 0.0  # a head or rank the accuracy table does not cover never hits
    return math.prod(float(acc[k, r]) for k, r in enumerate(c))


def expected_accept_length(choices, acc) -> float:
    """E[τ] = 1 + Σ_c Π_k a[k, c_k]: expected tokens per step (root/bonus token counted)."""
    nodes = validate_choices(choices)
    acc = _check_accuracy(acc)
    return 1.0 + sum(_path_probability(c, acc) for c in nodes)


def grow_tree(head_topk_accuracy, budget: int) -> list[tuple[int, ...]]:
    """Greedy tree of ``budget`` nodes below the root, maximising E[τ] under independent heads.

    head_topk_accuracy: (K, topk), a[k, r] = P(rank r of head k is the true token t+k+2).
    Returns the choices in the order they were added (largest path probability first).
    """
    acc = _check_accuracy(head_topk_accuracy)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"budget: expected an int >= 0 (tree nodes below the root), got {budget!r}")
    K, topk = acc.shape
    # max-heap over frontier nodes; ties broken towards shallow, low-rank paths (deterministic)
    frontier = [(-float(acc[0, r]), (r,)) for r in range(topk)]
    heapq.heapify(frontier)
    chosen: list[tuple[int, ...]] = []
    while frontier and len(chosen) < budget:
        neg_p, c = heapq.heappop(frontier)
        chosen.append(c)
        if len(c) < K:
            for r in range(topk):
                heapq.heappush(frontier, (neg_p * float(acc[len(c), r]), c + (r,)))
    return chosen


def head_rank_accuracy(head_logits: torch.Tensor, input_ids: torch.Tensor, topk: int = 10) -> torch.Tensor:
    """Per-rank hit rates a[k, r] from head logits (K, B, T, V) on ids (B, T): head k at t targets t+k+2."""
    if head_logits.dim() != 4 or input_ids.dim() != 2 or head_logits.shape[1:3] != input_ids.shape:
        raise ValueError(f"head_logits, input_ids: expected (K, B, T, V) and (B, T), got {tuple(head_logits.shape)} "
                         f"and {tuple(input_ids.shape)}")
    K, B, T, V = head_logits.shape
    acc = torch.zeros(K, topk, dtype=torch.float64)
    for k in range(K):
        shift = k + 2
        if T <= shift:
            continue
        ranks = head_logits[k, :, : T - shift].topk(min(topk, V), dim=-1).indices  # (B, T-shift, topk)
        hits = ranks == input_ids[:, shift:, None]
        acc[k, : hits.shape[-1]] = hits.double().mean((0, 1)).cpu()
    return acc


def _cost_of(cost, size: int) -> float:
    """c(size) from a callable, or from measured {size: time} by linear inter/extrapolation."""
    if callable(cost):
        return float(cost(size))
    if isinstance(cost, Mapping) and cost:
        xs = sorted(cost)
        if size in cost or len(xs) == 1:
            return float(cost.get(size, cost[xs[0]]))
        # the segment that holds size, or the end segment nearest to it
        hi = next((x for x in xs[1:] if x >= size), xs[-1])
        lo = xs[xs.index(hi) - 1]
        return float(cost[lo] + (cost[hi] - cost[lo]) * (size - lo) / (hi - lo))
    raise ValueError(f"cost: expected a callable size -> time or a non-empty mapping size -> time, got {cost!r}")


def tree_throughput(choices, acc, cost: Callable[[int], float] | Mapping[int, float]) -> float:
    """Expected tokens per unit time, E[τ](T) / c(|T| + 1)."""
    nodes = validate_choices(choices)
    c = _cost_of(cost, len(nodes) + 1)
    if not c > 0:
        raise ValueError(f"cost: expected a positive time for {len(nodes) + 1} tree tokens, got {c}")
    return expected_accept_length(nodes, acc) / c


def select_tree(trees: Sequence, acc, cost: Callable[[int], float] | Mapping[int, float]):
    """The tree in ``trees`` with the most expected accepted tokens per unit of time.

    cost: verification time of q tree tokens, a callable q -> time or measured {q: time} (interpolated).
    """
    trees = list(trees)
    if not trees:
        raise ValueError("trees: expected at least one candidate tree")
    scores = [tree_throughput(t, acc, cost) for t in trees]
    return trees[max(range(len(trees)), key=scores.__getitem__)]


def measure_verify_cost(model, sizes: Sequence[int], prefix_len: int = 64, repeats: int = 5, warmup: int = 2,
                        seed: int = 0) -> dict[int, float]:
    """Median wall time (ms) of one verification forward of q tree tokens over a ``prefix_len`` cache.

    The forward is the one medusa_generate runs: q tokens, a 4-D mask over cache + tree, depth
    position ids, base logits for all q tokens (medusa_generate skips the leaves' logits, so this is a
    slight upper bound). q = 1 is a plain decode step. Tree shape does not change the dense cost, so a
    chain of q tokens is timed.
    """
    from .decode import _as_medusa, _check_model, _full_cache, _tree_step_inputs

    medusa = _as_medusa(model)
    layout = _check_model(medusa)
    sizes = [int(q) for q in sizes]
    if not sizes or any(q < 1 for q in sizes):
        raise ValueError(f"sizes: expected tree sizes >= 1, got {sizes}")
    if prefix_len < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"prefix_len, repeats, warmup: expected >= 1, >= 1, >= 0, got {prefix_len}, {repeats}, "
                         f"{warmup}")
    device = medusa.lm_head.weight.device
    V = medusa.lm_head.weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, V, (1, prefix_len), generator=g).to(device)
    out: dict[int, float] = {}
    with torch.no_grad():
        _, cache = backbone_forward(medusa, prompt, cache=_full_cache(medusa), use_cache=True)
        for q in sizes:
            buffers = build_tree(chain(q - 1)).to(device)
            ids = torch.randint(0, V, (1, q), generator=g).to(device)
            times = []
            for i in range(warmup + repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                mask, pos = _tree_step_inputs(buffers, prefix_len, medusa, device, layout)
                hidden, _ = backbone_forward(medusa, ids, attention_mask=mask, position_ids=pos, cache=cache,
                                             use_cache=True)
                medusa.base_logits(hidden)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t1 = time.perf_counter()
                cache.crop(-q)
                if i >= warmup:
                    times.append((t1 - t0) * 1e3)
            out[q] = float(sorted(times)[len(times) // 2])
    return out
