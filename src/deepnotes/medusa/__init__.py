"""Medusa (Cai et al. 2024): extra decoding heads on any transformers causal LM, a candidate tree verified
in one masked forward, greedy or typical acceptance, and a compacted KV cache (note 12).

heads.py   MedusaModel: residual heads with their own vocabulary projections, save/load with the base
tree.py    build_tree / TreeBuffers, MC_SIM_7B_63, grow_tree, expected_accept_length, select_tree,
           measure_verify_cost
acceptance.py  accept_greedy / accept_typical (one signature)
decode.py  medusa_generate -> GenerationResult(tokens, steps, accepted)
train.py   (the training side: MedusaTraining, medusa_loss, train_medusa, trained_medusa), imported lazily
"""
from . import acceptance, decode, heads, tree
from .acceptance import ACCEPTANCE, accept_greedy, accept_typical
from .decode import (GenerationResult, compact_cache, default_choices, medusa_generate, medusa_generate_reference,
                     tree_attention_mask)
from .heads import MedusaHead, MedusaModel, MedusaOutput, ResBlock
from .tree import (MC_SIM_7B_63, TreeBuffers, build_tree, chain, expected_accept_length, grow_tree,
                   head_rank_accuracy, measure_verify_cost, select_tree, single_node, tree_throughput,
                   validate_choices)

_TRAIN_NAMES = ("MedusaTraining", "medusa_loss", "train_medusa", "trained_medusa")

__all__ = ["acceptance", "decode", "heads", "tree", "ACCEPTANCE", "accept_greedy", "accept_typical",
           "GenerationResult", "compact_cache", "default_choices", "medusa_generate", "medusa_generate_reference",
           "tree_attention_mask",
           "MedusaHead", "MedusaModel", "MedusaOutput", "ResBlock", "MC_SIM_7B_63", "TreeBuffers", "build_tree",
           "chain", "expected_accept_length", "grow_tree", "head_rank_accuracy", "measure_verify_cost",
           "select_tree", "single_node", "tree_throughput", "validate_choices", *_TRAIN_NAMES]


def __getattr__(name: str):
    # the training side lives in train.py (its own helper); import it only when one of its names is used
    if name in _TRAIN_NAMES:
        from . import train

        return getattr(train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
