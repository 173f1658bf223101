"""Experiments: one per note, each measuring its note's claim.

REGISTRY is a plain dict filled by the explicit imports below; a note whose
experiment is not written yet is simply absent (see catalogue.NOTES).
"""
from __future__ import annotations

from .base import Check, Context, Experiment, Figure, Result, Table, compute_verdict, seed_everything
from .catalogue import NOTES, NOTES_BY_SLUG, Note
from .activations import Activations
from .adamw import AdamWExperiment
from .flash_attention import FlashAttention
from .medusa import Medusa
from .mixed_precision import MixedPrecision
from .score_sde import ScoreSDE
from .sde_intro import SDEIntro
from .smld import SMLD
from .stochastic_approximation import StochasticApproximation
from .temporal_modeling import TemporalModeling
from .two_stream import TwoStream
from .upsampling import Upsampling

__all__ = [
    "REGISTRY",
    "NOTES",
    "NOTES_BY_SLUG",
    "Note",
    "Check",
    "Context",
    "Experiment",
    "Figure",
    "Result",
    "Table",
    "compute_verdict",
    "seed_everything",
]

REGISTRY: dict[str, Experiment] = {
    TemporalModeling.slug: TemporalModeling(),
    TwoStream.slug: TwoStream(),
    Activations.slug: Activations(),
    StochasticApproximation.slug: StochasticApproximation(),
    Upsampling.slug: Upsampling(),
    FlashAttention.slug: FlashAttention(),
    AdamWExperiment.slug: AdamWExperiment(),
    MixedPrecision.slug: MixedPrecision(),
    ScoreSDE.slug: ScoreSDE(),
    SMLD.slug: SMLD(),
    SDEIntro.slug: SDEIntro(),
    Medusa.slug: Medusa(),
}
