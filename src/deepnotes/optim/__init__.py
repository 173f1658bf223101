"""Optimisers and stochastic approximation."""
from . import adam, sa, schedules
from .adam import Adam, AdamW
from .sa import kiefer_wolfowitz, polyak_average, robbins_monro, running_mean, spsa

__all__ = ["sa", "running_mean", "robbins_monro", "kiefer_wolfowitz", "spsa", "polyak_average",
           "adam", "Adam", "AdamW", "schedules"]
