r"""Medusa heads over any transformers causal LM (Cai et al. 2024, arXiv 2401.10774, §2.1.1).

The base model maps a prefix to its last hidden state h_t (after the final norm) and predicts
token t+1 with its output embedding, p₀(x_{t+1}) = softmax(W_lm h_t). Head k (0-based, k < K)
predicts token t+k+2 from the same h_t through ``num_layers`` residual blocks and its own
vocabulary projection:

    h⁽⁰⁾ = h_t,    h⁽ˡ⁺¹⁾ = h⁽ˡ⁾ + SiLU(W_l h⁽ˡ⁾ + b_l)     (separate W_l, b_l per layer and head)
    p_k(x_{t+k+2}) = softmax(U_k h⁽ᴸ⁾),                   U_k ← copy of W_lm at initialisation

W_l and b_l start at zero, so SiLU(0) = 0 makes every block the identity and every head starts
as the base's own next-token predictor (a good prior for "the token after next"). The
reference builds its blocks as ``[ResBlock] * n`` and so shares them across layers by
accident; here each layer owns its weights.

``MedusaModel`` runs the base's backbone once and applies both the base output embedding and
the heads to the same hidden states, so one forward gives the verification logits and the
next proposals.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["ResBlock", "MedusaHead", "MedusaOutput", "MedusaModel", "backbone_forward"]

CONFIG_NAME = "medusa_config.json"
HEADS_NAME = "medusa_heads.safetensors"


class ResBlock(nn.Module):
    """h ↦ h + SiLU(W h + b), W and b zero-initialised (the identity at the start)."""

    def __init__(self, hidden_size: int, device=None, dtype=None):
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size, device=device, dtype=dtype)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.act(self.linear(h))


class MedusaHead(nn.Module):
    """``num_layers`` ResBlocks, then a vocabulary projection initialised from ``lm_head``; with
    ``own_projection=False`` the blocks alone (MedusaModel applies the base's lm_head)."""

    def __init__(self, lm_head: nn.Module, num_layers: int, own_projection: bool = True):
        super().__init__()
        weight = lm_head.weight
        V, D = weight.shape
        kw = dict(device=weight.device, dtype=weight.dtype)
        self.blocks = nn.Sequential(*[ResBlock(D, **kw) for _ in range(num_layers)])
        self.proj = None
        if own_projection:
            bias = getattr(lm_head, "bias", None)
            self.proj = nn.Linear(D, V, bias=bias is not None, **kw)
            with torch.no_grad():
                self.proj.weight.copy_(weight)
                if bias is not None:
                    self.proj.bias.copy_(bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V) logits (own projection) or (..., D) features (shared: MedusaModel projects)."""
        h = self.blocks(h)
        return h if self.proj is None else self.proj(h)


@dataclass
class MedusaOutput:
    logits: torch.Tensor  # (B, T, V) base next-token logits
    head_logits: torch.Tensor | None  # (K, B, T, V): head k at t predicts token t+k+2
    past_key_values: object | None  # the transformers Cache, when use_cache
    hidden_states: torch.Tensor  # (B, T, D) last hidden state, after the final norm


def _output_embeddings(base: nn.Module) -> nn.Module:
    get = getattr(base, "get_output_embeddings", None)
    lm_head = get() if callable(get) else None
    weight = getattr(lm_head, "weight", None)
    if lm_head is None or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"base: expected a causal LM with output embeddings (an lm_head Linear), got "
                         f"{type(base).__name__} whose get_output_embeddings() is {type(lm_head).__name__}")
    return lm_head


def _backbone(base: nn.Module) -> nn.Module:
    backbone = getattr(base, "base_model", None)
    if backbone is base:  # base_model_prefix names no attribute (Llama4ForCausalLM): the usual one
        backbone = getattr(base, "model", None)
    if not isinstance(backbone, nn.Module) or backbone is base:
        raise ValueError(f"base: expected a transformers *ForCausalLM with a backbone under base_model, "
                         f"got {type(base).__name__}")
    return backbone


def _logit_scale(base: nn.Module) -> float:
    """The factor the base's forward applies to its lm_head output (medusa_generate probes that it matches)."""
    scale = getattr(base, "logit_scale", None)  # Cohere: logits * logit_scale
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        return float(scale)
    scaling, name = getattr(base.config, "logits_scaling", None), type(base).__name__
    if scaling and name.startswith(("Granite", "MiniCPM")):  # logits (MiniCPM3: the bias-free input) / scaling
        return 1.0 / float(scaling)
    if scaling and name.startswith("HyperCLOVAX"):  # logits * scaling
        return float(scaling)
    return 1.0


def _cache_kwarg(backbone: nn.Module) -> str:
    # transformers 5.x renamed past_key_values to cache (deprecated alias kept until 5.40)
    params = inspect.signature(backbone.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def backbone_forward(model: "MedusaModel", input_ids: torch.Tensor, *, attention_mask=None, position_ids=None,
                     cache=None, use_cache: bool = False):
    """Run the base backbone: (B, T) ids -> ((B, T, D) last hidden state, cache or None)."""
    kwargs = {model._cache_name: cache} if cache is not None else {}
    out = model.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache, **kwargs)
    if not use_cache:
        return out.last_hidden_state, None
    # "cache" on transformers 5.x; asking a 5.x output for "past_key_values" logs a deprecation
    new_cache = out.get("cache", None) if model._cache_name == "cache" else out.get("past_key_values", None)
    return out.last_hidden_state, new_cache


class MedusaModel(nn.Module):
    """A causal LM with ``num_heads`` Medusa heads; ``forward`` gives base and head logits in one pass.

    Args:
        base: a transformers causal LM (LlamaForCausalLM, GPT2LMHeadModel, ...) with an lm_head.
        num_heads: K, the number of extra heads; head k predicts token t+k+2.
        num_layers: residual blocks per head (each with its own weights).
        shared_projection: False (Medusa): each head owns a copy of lm_head; True: the heads' blocks feed
            the base's own lm_head, so one (K, D) x (D, V) product proposes for all heads and K vocabulary
            matrices are not read every step (with V >> D these dominate a small model's step).
    """

    def __init__(self, base: nn.Module, num_heads: int = 4, num_layers: int = 1, shared_projection: bool = False):
        super().__init__()
        for name, value in (("num_heads", num_heads), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        lm_head = _output_embeddings(base)
        self.base = base
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.shared_projection = bool(shared_projection)
        self.heads = nn.ModuleList(MedusaHead(lm_head, num_layers, own_projection=not shared_projection)
                                   for _ in range(num_heads))
        self._cache_name = _cache_kwarg(_backbone(base))
        self._softcap = getattr(base.config, "final_logit_softcapping", None)
        self._scale = _logit_scale(base)

    # --- the pieces -----------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        return _backbone(self.base)

    @property
    def lm_head(self) -> nn.Module:
        return _output_embeddings(self.base)

    @property
    def config(self):
        return self.base.config

    def base_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) last hidden states -> (..., V) the base model's next-token logits."""
        logits = self.lm_head(hidden)
        if self._scale != 1.0:  # as the base's own forward does
            logits = logits * self._scale
        if self._softcap:  # Gemma-2 style final soft-capping, as the base's own forward does
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def head_logits(self, hidden: torch.Tensor, num: int | None = None) -> torch.Tensor:
        """(..., D) hidden states -> (K, ..., V) head logits (head k at t predicts token t+k+2); ``num``:
        the first heads only."""
        heads = self.heads[:num] if num is not None else self.heads
        out = torch.stack([head(hidden) for head in heads])
        return self.base_logits(out) if self.shared_projection else out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False,
                output_heads: bool = True) -> MedusaOutput:
        """(B, T) ids -> MedusaOutput(logits (B,T,V), head_logits (K,B,T,V) or None, cache, hidden (B,T,D))."""
        hidden, cache = backbone_forward(self, input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                         cache=past_key_values, use_cache=use_cache)
        heads = self.head_logits(hidden) if output_heads else None
        return MedusaOutput(logits=self.base_logits(hidden), head_logits=heads, past_key_values=cache,
                            hidden_states=hidden)

    def freeze_base(self) -> "MedusaModel":
        """Medusa-1: the backbone and lm_head get no gradient; only the heads train."""
        self.base.requires_grad_(False)
        return self

    # --- persistence ----------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the base as a save_pretrained folder plus medusa_heads.safetensors and medusa_config.json.

        The folder stays loadable by AutoModelForCausalLM.from_pretrained as the plain base model.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.base.save_pretrained(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.heads.state_dict().items()}
        save_file(state, str(directory / HEADS_NAME))
        config = {"num_heads": self.num_heads, "num_layers": self.num_layers,
                  "shared_projection": self.shared_projection, "format": "deepnotes.medusa/1"}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, **base_kwargs) -> "MedusaModel":
        """Load what save_pretrained wrote; ``base_kwargs`` go to AutoModelForCausalLM.from_pretrained."""
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise ValueError(f"directory: expected a MedusaModel folder with {CONFIG_NAME}, got {directory}")
        config = json.loads(config_path.read_text())
        base = AutoModelForCausalLM.from_pretrained(directory, **base_kwargs)
        model = cls(base, num_heads=int(config["num_heads"]), num_layers=int(config["num_layers"]),
                    shared_projection=bool(config.get("shared_projection", False)))
        state = load_file(str(directory / HEADS_NAME), device=str(model.lm_head.weight.device))
        model.heads.load_state_dict(state)
        return model
