"""Medusa (Cai et al. 2024): extra decoding heads on any transformers causal LM, a candidate tree verified
in one masked forward, greedy or typical acceptance, and a compacted KV cache (note 12).

heads.py   MedusaModel: residual heads with their own vocabulary projections, save/load with the base
tree.py    build_tree / TreeBuffers, MC_SIM_7B_63, grow_tree, expected_accept_length, select_tree,
           measure_verify_cost
acceptance.py  accept_greedy / accept_typical (one signature)
decode.py  medusa_generate -> GenerationResult(tokens, steps, accepted)
train.py   MedusaTraining, medusa_loss (Medusa-1/2), train_medusa, trained_medusa
cli.py     deepnotes medusa train|generate|eval

Names are imported lazily from their modules, so `import deepnotes.medusa` stays cheap.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "acceptance": ["ACCEPTANCE", "accept_greedy", "accept_typical"],
    "decode": ["GenerationResult", "compact_cache", "default_choices", "medusa_generate", "medusa_generate_reference",
               "tree_attention_mask"],
    "heads": ["MedusaHead", "MedusaModel", "MedusaOutput", "ResBlock"],
    "tree": ["MC_SIM_7B_63", "TreeBuffers", "build_tree", "chain", "expected_accept_length", "grow_tree",
             "head_rank_accuracy", "measure_verify_cost", "select_tree", "single_node", "tree_throughput",
             "validate_choices"],
    "train": ["MedusaTraining", "medusa_loss", "train_medusa", "trained_medusa"],
    "cli": [],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
