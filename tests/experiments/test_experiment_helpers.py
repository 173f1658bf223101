"""The small measures the adamw and mixed-precision experiments decide their verdicts with."""
import numpy as np
import pytest
import torch

from deepnotes.experiments.adamw import additive_r2, best_wd_spread
from deepnotes.experiments.digits import DigitsCNN, load_digits_split
from deepnotes.experiments.mixed_precision import fp16_underflow_fraction


def test_additive_r2_is_one_for_a_separable_grid_and_zero_for_pure_interaction():
    rows, cols = np.array([0.1, 0.2, 0.4]), np.array([0.0, 0.05, 0.3])
    assert additive_r2(rows[:, None] + cols[None, :]) == pytest.approx(1.0)
    assert additive_r2(np.array([[1.0, -1.0], [-1.0, 1.0]])) == pytest.approx(0.0)
    assert additive_r2(np.ones((3, 3))) == 1.0


def test_best_wd_spread_measures_how_far_the_argmin_moves():
    wds = np.array([1e-4, 1e-3, 1e-2])
    fixed = np.array([[3, 1, 2], [5, 1, 9], [2, 1, 3]], dtype=float)
    diagonal = np.array([[1, 2, 3], [2, 1, 3], [3, 2, 1]], dtype=float)
    assert best_wd_spread(fixed, wds) == 0.0
    assert best_wd_spread(diagonal, wds) == pytest.approx(np.std([-4, -3, -2]))


def test_fp16_underflow_fraction_uses_fp16_rounding_and_ignores_true_zeros():
    # references/fundamentals.md (b): 1e-8 -> 0 in fp16, while 1e-8 * 1024 -> 1.025e-5.
    g = torch.tensor([1e-8, 1e-3, 0.0])
    assert fp16_underflow_fraction(g) == 0.5
    assert fp16_underflow_fraction(g, scale=1024.0) == 0.0
    assert fp16_underflow_fraction(torch.zeros(3)) == 0.0


def test_digits_split_and_cnn_shapes():
    train, test = load_digits_split(seed=0)
    assert len(train) + len(test) == 1797 and len(test) == 539
    x, y = train.tensors
    assert x.shape[1:] == (1, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert DigitsCNN()(x[:5]).shape == (5, 10)
