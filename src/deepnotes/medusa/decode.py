r"""medusa_generate: self-speculative decoding with Medusa heads and one masked tree forward per step.

State after each step: a KV cache over the L accepted tokens and, at the last of them, the base
logits z and hidden state h. A step

1. proposes: root x₀ = argmax z (the base's own next token), head k's top-k of U_k·block(h);
   the tree's n tokens are [x₀, top-k₀, top-k₁, …][tree_indices];
2. verifies all n tokens in one forward of the base over the cache, with the 4-D mask
   M = [1_{n×L} | tree mask] of shape (1, 1, n, L+n) and position ids L + depth;
3. accepts the longest path that passes the rule (greedy: each token equals the argmax after
   its parent; typical: see acceptance.py), a ∈ [1, depth+1] tokens counting the root;
4. compacts the cache: the a accepted nodes' keys/values are gathered into slots L … L+a−1 and
   the rest dropped (a path in a tree is not a contiguous block, so crop alone is wrong);
5. emits the a tokens and takes z, h from the last accepted node for the next step.

With greedy acceptance every emitted token is the base's argmax given the tokens before it, so
the output equals plain greedy decoding (transformers ``generate(do_sample=False)``) token for
token, up to float ties. Generation stops after an eos token (emitted) or exactly
``max_new_tokens`` tokens, even in the middle of an accepted path.

The verification forward is the model's own (eager, sdpa or any attention that takes a 4-D
mask): eager gets an additive float mask (0 / finfo.min), the others a bool mask. The cache keeps
every token (full DynamicLayers); sliding-window layers get the window in their mask instead, and
models mixing both kinds get a {"full_attention": …, "sliding_attention": …} mask per layer type.
Bases the masked tree forward cannot verify exactly are refused up front with a ValueError: no
``position_ids`` or cache argument (ALiBi Bloom/MPT, Mamba, RWKV, OpenAI GPT), ALiBi Falcon,
GPT-Neo local attention, linear/conv/chunked/indexed/KV-sharing layers (``_check_model``), and
logits other than lm_head(hidden) with the known soft-cap/scale (``_check_logits``, a one-token probe).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from .acceptance import ACCEPTANCE, accept_typical, best_greedy, check_rule_parameters
from .heads import MedusaModel, backbone_forward
from .tree import MC_SIM_7B_63, TreeBuffers, build_tree

__all__ = ["GenerationResult", "medusa_generate", "medusa_generate_reference", "compact_cache", "tree_attention_mask",
           "default_choices"]


@dataclass
class GenerationResult:
    tokens: torch.Tensor | list  # (N,) new tokens for batch 1; a list of (N_b,) tensors for batch > 1
    steps: int | list  # verification forwards (prefill not counted); a list per row for batch > 1
    accepted: list = field(default_factory=list)  # tokens emitted per step, each in [1, depth+1], summing to N

    @property
    def mean_accepted(self) -> float:
        """Average tokens per verification step (bonus/root token counted)."""
        flat = self.accepted if not self.accepted or isinstance(self.accepted[0], int) else \
            [a for row in self.accepted for a in row]
        return sum(flat) / max(len(flat), 1)


def default_choices(num_heads: int) -> list[tuple[int, ...]]:
    """MC_SIM_7B_63 restricted to paths the model has heads for (all of it for >= 4 heads)."""
    return [c for c in MC_SIM_7B_63 if len(c) <= num_heads]


def _as_medusa(model) -> MedusaModel:
    if isinstance(model, MedusaModel):
        return model
    if hasattr(model, "get_output_embeddings"):
        return MedusaModel(model, num_heads=1)
    raise TypeError(f"model: expected a MedusaModel (or a transformers causal LM), got {type(model).__name__}")


def _mask_kind(model: MedusaModel):
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if "flash" in impl:
        raise ValueError(f"model: attention implementation {impl!r} does not take 4-D masks; use 'sdpa' or 'eager'")
    # eager adds the mask to the scores; sdpa and mask-taking kernels accept bool (True = attend)
    return model.lm_head.weight.dtype if impl == "eager" else torch.bool


def _as_kind(allowed: torch.Tensor, kind) -> torch.Tensor:
    if kind == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=kind, device=allowed.device).masked_fill_(~allowed, torch.finfo(kind).min)


def tree_attention_mask(buffers: TreeBuffers, past_len: int, kind=torch.bool, device=None,
                        window: int | None = None) -> torch.Tensor:
    """(1, 1, n, past_len + n) mask: every tree node sees the whole cache, then its ancestors and itself.

    kind: torch.bool (True = attend) or a float dtype (additive 0 / finfo.min).
    window: sliding-window size; a query at position p then sees only keys at positions > p - window
    (cache slot j holds position j, tree node i position past_len + depth_i).
    """
    device = device if device is not None else buffers.attn_mask.device
    n = buffers.num_nodes
    tree = buffers.attn_mask.to(device)
    allowed = torch.cat([torch.ones(n, past_len, dtype=torch.bool, device=device), tree], dim=-1)
    if window is not None:
        depth = buffers.position_ids.to(device)
        keys = torch.cat([torch.arange(past_len, device=device), past_len + depth])
        allowed &= keys > (past_len + depth - window).unsqueeze(-1)
    return _as_kind(allowed, kind).view(1, 1, n, past_len + n)


@dataclass(frozen=True)
class _Layout:
    kinds: frozenset  # layer types among {"full_attention", "sliding_attention"}
    window: int | None  # the sliding window, when there are sliding layers


def _reject(model: MedusaModel, why: str):
    raise ValueError(f"model: {type(model.base).__name__} {why}; medusa_generate verifies its candidate tree in one "
                     f"forward with position_ids and a 4-D attention mask over a cache of every token's keys and "
                     f"values, and would not reproduce this model's own decoding")


def _check_model(model: MedusaModel) -> _Layout:
    """Refuse bases the masked tree forward cannot verify exactly; return their attention layout."""
    params = inspect.signature(model.backbone.forward).parameters
    if "position_ids" not in params:
        _reject(model, "takes no position_ids (ALiBi or recurrent state follows cache slots, not tree depths)")
    if model._cache_name not in params:
        _reject(model, "keeps no KV cache")
    cfg = model.config.get_text_config(decoder=True)
    if getattr(cfg, "alibi", False):
        _reject(model, "uses ALiBi biases built from a 2-D padding mask")
    if "local" in (getattr(cfg, "attention_layers", None) or ()):
        _reject(model, "has local attention layers whose window counts cache slots (GPT-Neo), not positions")
    from transformers.cache_utils import get_layer_types_and_kwargs

    types, kwargs = get_layer_types_and_kwargs(cfg)
    windows = {kw["sliding_window"] for t, kw in zip(types, kwargs) if t == "sliding_attention"}
    if not set(types) <= {"full_attention", "sliding_attention"} or len(windows) > 1:
        _reject(model, f"has layer types {sorted(set(types))} with sliding windows {sorted(windows)} (supported: "
                       f"full_attention and sliding_attention with one window)")
    return _Layout(frozenset(types), windows.pop() if windows else None)


def _check_logits(model: MedusaModel, input_ids: torch.Tensor) -> None:
    """One-token probe, once per model: base_logits(backbone hidden) must be the base's own logits."""
    if getattr(model, "_logits_checked", False):
        return
    ids = input_ids[:1, :1]
    want = model.base(input_ids=ids, use_cache=False).logits[0, -1].float()
    hidden, _ = backbone_forward(model, ids)
    got = model.base_logits(hidden[:, -1:])[0, 0].float()
    tol = max(1e-4, 8 * torch.finfo(model.lm_head.weight.dtype).eps) * float(want.abs().max())
    if got.shape != want.shape or not torch.allclose(got, want, rtol=0, atol=tol):
        _reject(model, "computes its logits from more than lm_head(last hidden state of base_model), soft-capping "
                       "and a logit scale (or is not in eval mode)")
    model._logits_checked = True


def _step_mask(buffers: TreeBuffers, past: int, kind, layout: _Layout, device):
    """The tree step's mask: one tensor, or one per layer type for models mixing full and sliding layers."""
    if layout.window is None:
        return tree_attention_mask(buffers, past, kind, device)
    sliding = tree_attention_mask(buffers, past, kind, device, layout.window)
    if layout.kinds == {"sliding_attention"}:
        return sliding
    return {"full_attention": tree_attention_mask(buffers, past, kind, device), "sliding_attention": sliding}


def _tree_step_inputs(buffers: TreeBuffers, past_len: int, model: MedusaModel, device, layout: _Layout | None = None):
    mask = _step_mask(buffers, past_len, _mask_kind(model), layout or _check_model(model), device)
    return mask, (buffers.position_ids.to(device) + past_len).unsqueeze(0)


def _full_cache(model: MedusaModel):
    """The base's DynamicCache with sliding layers made full: a sliding layer drops the keys its window leaves
    behind, and the tree's ancestors are not the latest keys (the window lives in the mask instead)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    cache = DynamicCache(config=model.config)
    cache.layers = [DynamicLayer() if getattr(layer, "is_sliding", False) else layer for layer in cache.layers]
    return cache


def _check_cache(cache) -> None:
    layers = getattr(cache, "layers", None)
    if layers is None or any(getattr(layer, "is_sliding", False) or not hasattr(layer, "keys") for layer in layers):
        raise ValueError(f"model: medusa_generate needs a DynamicCache of full-attention layers, got "
                         f"{type(cache).__name__} with layers {[type(layer).__name__ for layer in layers or []]}")


def compact_cache(cache, start: int, path) -> None:
    """Keep cache slots [0, start) plus start + path (node ids), moved to start … start+len(path)-1.

    Works in place on a transformers DynamicCache (cache.layers[i].keys/.values, (B, H, S, D)).
    """
    path = list(path) if not isinstance(path, torch.Tensor) else path.tolist()
    a = len(path)
    layers = [layer for layer in cache.layers if getattr(layer, "is_initialized", True)]
    if path != list(range(a)) and layers:  # nodes off the first block: gather them down first
        idx = torch.tensor(path, device=layers[0].keys.device) + start
        for layer in layers:
            layer.keys[..., start:start + a, :] = layer.keys.index_select(-2, idx)
            layer.values[..., start:start + a, :] = layer.values.index_select(-2, idx)
    for layer in layers:
        if layer.keys.shape[-2] != start + a:
            layer.keys = layer.keys[..., : start + a, :]
            layer.values = layer.values[..., : start + a, :]


def _resolve_tree(model: MedusaModel, choices) -> TreeBuffers:
    if isinstance(choices, TreeBuffers):
        buffers = choices
    else:
        buffers = build_tree(default_choices(model.num_heads) if choices is None else choices)
    if buffers.depth > model.num_heads:
        raise ValueError(f"choices: the tree is {buffers.depth} deep but the model has {model.num_heads} heads")
    V = model.lm_head.weight.shape[0]
    if buffers.topk > V:
        raise ValueError(f"choices: ranks up to {buffers.topk - 1} exceed the vocabulary of {V}")
    return buffers


def _eos_set(model: MedusaModel, eos_token_id) -> frozenset:
    if eos_token_id is None:
        gen = getattr(model.base, "generation_config", None)
        eos_token_id = getattr(gen, "eos_token_id", None)
    if eos_token_id is None:
        return frozenset()
    if isinstance(eos_token_id, torch.Tensor):
        eos_token_id = eos_token_id.tolist()
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in ids):
        raise ValueError(f"eos_token_id: expected an int >= 0 or a list of them, got {eos_token_id!r}")
    return frozenset(ids)


def _generate_row(model: MedusaModel, input_ids: torch.Tensor, max_new_tokens: int, buffers: TreeBuffers,
                  rule: str, temperature: float, posterior_threshold: float, posterior_alpha: float,
                  eos: frozenset, layout: _Layout) -> GenerationResult:
    """Batch-1 loop over a (1, S) prompt."""
    device = input_ids.device
    S = input_ids.shape[1]
    n, depth, topk = buffers.num_nodes, buffers.depth, buffers.topk
    kind = _mask_kind(model)
    # everything shape-static is built once
    tree_idx = buffers.tree_indices.to(device)
    depth_pos = buffers.position_ids.to(device).unsqueeze(0)  # (1, n)
    retrieve = buffers.retrieve_indices.to(device)
    valid = retrieve >= 0
    retrieve_c = retrieve.clamp(min=0)  # (P, L) gather index; padding masked by ``valid``
    retrieve_list = buffers.retrieve_indices.tolist()
    # Only internal nodes (parents of candidates) need logits to judge their children; a leaf's logits
    # matter only when the accepted path ends there. With 42 leaves of 64 nodes this skips 2/3 of the lm_head.
    internal = sorted({row[d] for row in retrieve_list for d in range(len(row) - 1) if row[d + 1] >= 0})
    internal_idx = torch.tensor(internal, dtype=torch.long, device=device)
    row_of = {node: r for r, node in enumerate(internal)}
    node_row = torch.tensor([row_of.get(i, len(internal)) for i in range(n)], dtype=torch.long, device=device)
    path_rows = node_row[retrieve_c]  # (P, L) rows of [internal logits; one filler row]
    no_token = torch.full((1,), -2, dtype=torch.long, device=device)  # a leaf "predicts" nothing
    mask_buffers = buffers.to(device)
    if layout.window is None:  # all-visible cache part built once, in the mask's kind, and sliced per step
        visible = _as_kind(torch.ones(n, S + max_new_tokens + depth + 1, dtype=torch.bool, device=device), kind)
        tree_block = _as_kind(mask_buffers.attn_mask, kind)

        def step_mask(past: int) -> torch.Tensor:  # = tree_attention_mask(mask_buffers, past, kind)
            return torch.cat([visible[:, :past], tree_block], dim=-1).view(1, 1, n, past + n)
    else:  # the window moves with the cache length
        def step_mask(past: int):
            return _step_mask(mask_buffers, past, kind, layout, device)
    pad = torch.full_like(retrieve, -1)
    greedy = rule == "greedy" or temperature == 0

    hidden, cache = backbone_forward(model, input_ids, cache=_full_cache(model), use_cache=True)  # prefill
    _check_cache(cache)
    h_last = hidden[:, -1:]  # (1, 1, D)
    z_last = model.base_logits(h_last)[0, 0]  # (V,)
    past = S
    out: list[int] = []
    accepted: list[int] = []
    while True:
        root = z_last.argmax().view(1)
        if depth:
            proposals = model.head_logits(h_last[0, 0], depth)  # (depth, V)
            flat = torch.cat([root, proposals.topk(topk, dim=-1).indices.reshape(-1)])  # (1 + depth*topk,)
        else:
            flat = root
        tree_tokens = flat[tree_idx]  # (n,)
        mask = step_mask(past)  # (1, 1, n, past + n), or one per layer type
        hidden, cache = backbone_forward(model, tree_tokens.unsqueeze(0), attention_mask=mask,
                                         position_ids=depth_pos + past, cache=cache, use_cache=True)
        if internal:
            z = model.base_logits(hidden[0, internal_idx])  # (m, V) at the internal nodes
            candidates = torch.where(valid, tree_tokens[retrieve_c], pad)  # (P, L)
            if greedy:
                best, length = best_greedy(candidates, torch.cat([z.argmax(-1), no_token])[path_rows])
            else:  # filler rows sit only before padding, which is never accepted
                z_paths = torch.cat([z, z.new_zeros(1, z.shape[-1])])[path_rows]  # (P, L, V)
                best, length = accept_typical(candidates, z_paths, temperature, posterior_threshold,
                                              posterior_alpha)
            info = torch.cat([torch.stack([best, length]), candidates[best]]).tolist()  # the one sync per step
            b, a = info[0], info[1]
            tokens = info[2:2 + a]
        else:  # the root alone: plain greedy decoding
            b, a, tokens = 0, 1, root.tolist()
        stop = False
        if eos:
            for i, t in enumerate(tokens):
                if t in eos:
                    tokens, stop = tokens[: i + 1], True
                    break
        room = max_new_tokens - len(out)
        if len(tokens) >= room:
            tokens, stop = tokens[:room], True
        out.extend(tokens)
        accepted.append(len(tokens))
        if stop:
            break
        path = retrieve_list[b][:a]
        compact_cache(cache, past, path)
        past += a
        h_last = hidden[:, path[-1]:path[-1] + 1]
        last = row_of.get(path[-1])
        z_last = z[last] if last is not None else model.base_logits(h_last[0, 0])
    return GenerationResult(torch.tensor(out, dtype=torch.long, device=device), len(accepted), accepted)


def _validate(model, input_ids, max_new_tokens, choices, acceptance, posterior_threshold, posterior_alpha,
              eos_token_id, temperature) -> tuple[TreeBuffers, frozenset]:
    if not isinstance(model, MedusaModel):
        raise TypeError(f"model: expected a MedusaModel, got {type(model).__name__}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected an int >= 1, got {max_new_tokens!r}")
    if acceptance not in ACCEPTANCE:
        raise ValueError(f"acceptance: expected one of {sorted(ACCEPTANCE)}, got {acceptance!r}")
    check_rule_parameters(temperature, posterior_threshold, posterior_alpha)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] < 1 \
            or input_ids.shape[0] < 1 or input_ids.dtype.is_floating_point:
        raise ValueError(f"input_ids: expected an integer (B, S) tensor with B, S >= 1, got "
                         f"{getattr(input_ids, 'shape', type(input_ids))}")
    buffers = _resolve_tree(model, choices)
    eos = _eos_set(model, eos_token_id)
    return buffers, eos


def medusa_generate(model: MedusaModel, input_ids: torch.Tensor, max_new_tokens: int, choices=None,
                    acceptance: str = "greedy", posterior_threshold: float = 0.09, posterior_alpha: float = 0.3,
                    eos_token_id=None, temperature: float = 0.0) -> GenerationResult:
    """Generate up to ``max_new_tokens`` new tokens with Medusa tree verification.

    Args:
        model: a MedusaModel (in eval mode, as for ``generate``).
        input_ids: (1, S) prompt, or (B, S): rows are decoded one after another, each with its own acceptance.
        max_new_tokens: exact cap on new tokens (>= 1).
        choices: rank paths of the candidate tree, or prebuilt TreeBuffers; default MC_SIM_7B_63 (cut to the
            model's heads).
        acceptance: "greedy" (output = greedy decoding) or "typical" (posterior_threshold ε,
            posterior_alpha δ, temperature T; T = 0 reduces to greedy).
        eos_token_id: int or list; None takes the base's generation_config.eos_token_id like ``generate``;
            [] disables stopping at eos.
    Returns:
        GenerationResult(tokens (N,) new tokens only, steps, accepted per step).
    """
    buffers, eos = _validate(model, input_ids, max_new_tokens, choices, acceptance, posterior_threshold,
                             posterior_alpha, eos_token_id, temperature)
    layout = _check_model(model)
    with torch.no_grad():
        _check_logits(model, input_ids)
    args = (max_new_tokens, buffers, acceptance, float(temperature), float(posterior_threshold),
            float(posterior_alpha), eos, layout)
    with torch.no_grad():
        rows = [_generate_row(model, input_ids[b:b + 1], *args) for b in range(input_ids.shape[0])]
    if len(rows) == 1:
        return rows[0]
    return GenerationResult([r.tokens for r in rows], [r.steps for r in rows], [r.accepted for r in rows])


def medusa_generate_reference(model: MedusaModel, input_ids: torch.Tensor, max_new_tokens: int, choices=None,
                              acceptance: str = "greedy", posterior_threshold: float = 0.09,
                              posterior_alpha: float = 0.3, eos_token_id=None,
                              temperature: float = 0.0) -> GenerationResult:
    """The readable path medusa_generate must equal: no cache, no tree mask, no compaction.

    Each step runs every root->leaf candidate path after the whole sequence so far as a plain
    causal batch, applies the public acceptance rule to the (P, L, V) logits and appends the
    accepted tokens. Batch 1 only; quadratic in the length, for tests.
    """
    buffers, eos = _validate(model, input_ids, max_new_tokens, choices, acceptance, posterior_threshold,
                             posterior_alpha, eos_token_id, temperature)
    if input_ids.shape[0] != 1:
        raise ValueError(f"input_ids: the reference decodes batch 1, got {tuple(input_ids.shape)}")
    rule = ACCEPTANCE[acceptance]
    seq = input_ids[0].tolist()
    out, accepted = [], []
    retrieve = buffers.retrieve_indices
    with torch.no_grad():
        hidden, _ = backbone_forward(model, input_ids)
        h, z = hidden[0, -1], model.base_logits(hidden[0, -1])
        while True:
            proposals = list(model.head_logits(h, buffers.depth).topk(buffers.topk).indices)
            flat = torch.cat([z.argmax().view(1)] + proposals)
            tree_tokens = flat[buffers.tree_indices]
            candidates = torch.where(retrieve >= 0, tree_tokens[retrieve.clamp(min=0)], -1)  # (P, L)
            S = len(seq)
            batch = torch.cat([torch.tensor(seq).expand(len(candidates), S), candidates.clamp(min=0)], dim=1)
            hidden, _ = backbone_forward(model, batch)  # padding sits after each path: causal, harmless
            logits = model.base_logits(hidden[:, S:])  # (P, L, V)
            best, length = (int(x) for x in rule(candidates, logits, temperature, posterior_threshold,
                                                 posterior_alpha))
            tokens = candidates[best, :length].tolist()
            seq += tokens
            h, z = hidden[best, S + length - 1], logits[best, length - 1]
            stop = False
            hit = [i for i, t in enumerate(tokens) if t in eos]
            if hit:
                tokens, stop = tokens[: hit[0] + 1], True
            if len(tokens) >= max_new_tokens - len(out):
                tokens, stop = tokens[: max_new_tokens - len(out)], True
            out += tokens
            accepted.append(len(tokens))
            if stop:
                return GenerationResult(torch.tensor(out, dtype=torch.long, device=input_ids.device), len(accepted),
                                        accepted)
