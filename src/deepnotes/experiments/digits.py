"""sklearn's digits (1,797 8x8 images, shipped with the package) and a small CNN,
shared by the experiments that train an image classifier (adamw, mixed-precision)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

__all__ = ["load_digits_split", "DigitsCNN", "cross_entropy_loss", "error_rate"]


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) TensorDatasets of (N, 1, 8, 8) float32 images in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values are 0..16
    y = torch.tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) -> (N, 10) logits; about 38k parameters."""

    def __init__(self, width: int = 16, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 2w, 8, 8) -> (N, 2w, 4, 4)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10))

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
