"""Initialising modules from a generator instead of torch's global random state.

torch's layers draw their initial weights from the global generator. To keep
randomness an argument, build (or reset) them inside ``rng_scope(generator)``:
the global CPU generator is seeded from `generator` for the block and restored
afterwards, so the weights follow from the generator alone and nothing outside
the block sees a changed global state.

    with rng_scope(torch.Generator().manual_seed(0)):
        model = MyModel()             # torch's own initialisation, reproducible
    reset_parameters_(model, gen)     # or re-draw an existing model's weights
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["rng_scope", "reset_parameters_"]


@contextlib.contextmanager
def rng_scope(generator: torch.Generator):
    """Seeds torch's global CPU generator from `generator` inside the block; restores it after."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def reset_parameters_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draws every submodule's parameters with its own ``reset_parameters``, from `generator`."""
    with rng_scope(generator):
        for m in module.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
    return module
