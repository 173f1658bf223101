"""sklearn's digits (1,797 8x8 images, shipped with the package): one loader for every
experiment that uses them, and the small CNN the image-classifier experiments train."""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..nn.init import rng_scope

__all__ = ["load_digits_tensors", "load_digits_split", "digits_features", "DigitsCNN", "cross_entropy_loss",
           "error_rate"]

N_LEVELS = 17  # pixel values are the integers 0..16


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # sklearn is heavy: imported only when digits are used

    digits = load_digits()
    return torch.tensor(digits.images, dtype=torch.int64), torch.tensor(digits.target, dtype=torch.int64)


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """(images (1797, 1, 8, 8) float32 in [0, 1], labels (1797,) int64); fresh tensors each call."""
    images, labels = _digits()
    return images.unsqueeze(1).float() / (N_LEVELS - 1), labels.clone()


def digits_features() -> tuple[torch.Tensor, torch.Tensor]:
    """(x (1797, 64) standardised per pixel, labels): the flat form an MLP takes."""
    images, labels = load_digits_tensors()
    x = images.flatten(1) * (N_LEVELS - 1)
    return (x - x.mean(0)) / (x.std(0) + 1e-3), labels


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) TensorDatasets of (N, 1, 8, 8) float32 images in [0, 1] and int64 labels."""
    x, y = load_digits_tensors()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) -> (N, 10) logits; about 38k parameters.

    ``generator`` draws the initial weights (torch's default initialisation);
    without one they come from torch's global generator, as for any torch layer.
    """

    def __init__(self, width: int = 16, hidden: int = 64, generator: torch.Generator | None = None):
        super().__init__()
        with rng_scope(generator) if generator is not None else contextlib.nullcontext():
            self.features = nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(2),  # (N, 2w, 8, 8) -> (N, 2w, 4, 4)
            )
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU(),
                                      nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def cross_entropy_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


@torch.no_grad()
def error_rate(model: nn.Module, data: TensorDataset) -> float:
    was_training = model.training
    model.eval()
    x, y = data.tensors
    wrong = (model(x).argmax(-1) != y).float().mean().item()
    model.train(was_training)
    return wrong
