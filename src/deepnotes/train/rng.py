"""The random-number state a checkpoint carries, so that a resumed run draws what an uninterrupted
one would: torch's global generator, numpy's, Python's, and the generator fit() was given for the
loss (stored as tensors and plain values: safetensors metadata, nothing pickled)."""
from __future__ import annotations

import random

import numpy as np
import torch

from .checkpoint import CheckpointError

__all__ = ["rng_state", "set_rng_state"]


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every RNG a training step may draw from: torch's, numpy's, Python's, and the loss's generator."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.as_tensor(keys.astype(np.int64)), int(pos),
                                                      int(has_gauss), float(cached)],
             "python": random.getstate()}
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Restores what rng_state saved; a generator the checkpoint has no state for is a CheckpointError."""
    torch.set_rng_state(state["torch"])
    if generator is not None:
        if "generator" not in state:
            raise CheckpointError("fit(generator=...) resumes from a checkpoint saved without a generator state: "
                                  "the loss's random draws cannot continue where they stopped")
        generator.set_state(state["generator"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
