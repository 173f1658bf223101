"""Note 1 experiment: tiny-scale wiring, and the kernel-uniformity measures on closed forms."""
import math

import pytest
import torch
from torch import nn

from deepnotes.experiments.temporal_modeling import (FLOPS_RATIO, TEMPORAL_BOUND, TSN_BOUND, kernel_uniformity,
                                                     pair_accuracy, temporal_kernels)


def test_tiny_run_is_wired(run_tiny):
    result, ctx = run_tiny("temporal-modeling")
    assert [c.label for c in result.checks] == ["TSN acc on pairs", "TSM acc on pairs", "TDN acc on pairs",
                                                "TSM pair acc", "TDN pair acc", "R3D/TSM FLOPs",
                                                "R3D/TSM latency", "3D kernels measured"]
    assert [c.threshold for c in result.checks[:6]] == [TSN_BOUND] + [TEMPORAL_BOUND] * 4 + [FLOPS_RATIO]
    assert result.seeds == 2
    # TSN's average consensus is blind to order: on the paired test set at most one clip of a pair is right
    assert result.metrics["tsn_accuracy"] <= 0.5 and result.metrics["tsn_pair_accuracy"] == 0.0
    assert result.checks[5].passed and result.checks[-1].passed  # FLOPs: 3x3x3 against 3x3; kernels counted
    assert result.metrics["tsm_tsn_flops_ratio"] == pytest.approx(1.0)  # the shift is free
    assert 0 <= result.metrics["kernels_order_smoothing"] <= 1 and 0 <= result.metrics["kernels_scene_entropy"] <= 1
    assert sorted(f.name for f in ctx.figures) == ["accuracy-flops", "kernels"]
    assert ctx.artifacts.trained == 2 * 3 + 3 + 1  # checked x seeds, reported, scene control


@pytest.mark.parametrize("w, entropy, smoothing", [
    ([1.0, 1.0, 1.0], 1.0, 1.0),  # uniform average
    ([0.0, 2.0, 0.0], 0.0, 1.0),  # identity: one tap
    ([1.0, 0.0, -1.0], math.log(2) / math.log(3), 0.0),  # central difference
    ([-1.0, 2.0, -1.0], -(0.25 * math.log(0.25) * 2 + 0.5 * math.log(0.5)) / math.log(3), 0.0),  # second difference
    ([1.0, 1.0, -2.0], -(0.25 * math.log(0.25) * 2 + 0.5 * math.log(0.5)) / math.log(3), 0.0),
    ([3.0, 1.0, 0.0], -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(3), 1.0),
])
def test_kernel_uniformity_closed_forms(w, entropy, smoothing):
    h, s = kernel_uniformity(torch.tensor([w]))
    assert h.item() == pytest.approx(entropy, abs=1e-6) and s.item() == pytest.approx(smoothing, abs=1e-6)


def test_kernels_are_summed_over_space_and_zero_rows_dropped():
    conv = nn.Conv3d(2, 3, (3, 3, 3), bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, :, 1, 1] = torch.tensor([1.0, 0.0, -1.0])
        conv.weight[0, 0, :, 0, 0] = torch.tensor([1.0, 0.0, 1.0])  # adds to the same kernel
    model = nn.Sequential(conv, nn.Conv3d(3, 3, (1, 3, 3)))  # a spatial-only conv is not a temporal kernel
    w = temporal_kernels(model)
    assert w.shape == (3 * 2, 3)
    torch.testing.assert_close(w[0], torch.tensor([2.0, 0.0, 0.0]))
    h, s = kernel_uniformity(w)
    assert h.shape == (1,) and s.item() == 1.0  # the five zero kernels are dropped
    with pytest.raises(ValueError, match="temporal kernel"):
        temporal_kernels(nn.Conv2d(1, 1, 3))


def test_pair_accuracy_needs_both_clips_right():
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    pairs = torch.arange(6).reshape(3, 2)
    assert pair_accuracy(torch.tensor([0, 1, 2, 2, 5, 4]), labels, pairs) == pytest.approx(1 / 3)
    order_blind = torch.tensor([0, 0, 3, 3, 4, 4])  # the same answer for a clip and its reversal
    assert pair_accuracy(order_blind, labels, pairs) == 0.0
