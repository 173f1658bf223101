"""Note 2 experiment: tiny-scale wiring, the streams' inputs and the flow colouring."""
import numpy as np
import pytest
import torch

from deepnotes.experiments.two_stream import FLOW_BOUND, flow_inputs, flow_to_rgb, group_accuracy, rgb_inputs
from deepnotes.video.flow import compute_flow, stack_flows
from deepnotes.video.synthetic import OrderShapes


def test_tiny_run_is_wired(run_tiny):
    result, ctx = run_tiny("two-stream")
    assert [c.label for c in result.checks] == ["appearance: spatial − temporal", "motion: temporal − spatial",
                                                "fused − best stream"]
    assert all(c.threshold == 0.0 and c.op == ">" for c in result.checks)
    assert result.seeds == 2
    for stream in ("spatial", "temporal", "fused"):
        for group in ("appearance", "motion", "overall"):
            assert 0.0 <= result.metrics[f"{stream}_{group}_accuracy"] <= 1.0
    assert sorted(f.name for f in ctx.figures) == ["accuracy", "flows"]
    assert ctx.artifacts.trained == 2 * 2  # two streams per seed


def test_the_streams_inputs():
    data = OrderShapes(2, frames=4, size=16, seed=0, variant="mixed")
    clips = data.clips  # uint8 (2, 3, 4, 16, 16)
    rgb = rgb_inputs(clips)
    assert rgb.shape == (2, 3, 1, 16, 16) and torch.equal(rgb[:, :, 0], clips[:, :, 2].float() / 255)
    flow = flow_inputs(clips)
    assert flow.shape == (2, 2 * 3, 1, 16, 16)  # T - 1 = 3 flows, x1, y1, x2, y2, x3, y3
    frames = clips[1].permute(1, 2, 3, 0).numpy()
    expected = np.asarray(stack_flows(compute_flow(frames), 0, 3)) / FLOW_BOUND
    np.testing.assert_allclose(flow[1, :, 0].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_flow_colours_direction_as_hue_and_magnitude_as_brightness():
    flow = np.zeros((2, 2, 2))
    flow[0, 0] = (1.0, 0.0)  # right: hue 0, red
    flow[0, 1] = (0.0, 2.0)  # down (image y), twice as long
    rgb = flow_to_rgb(flow)
    np.testing.assert_allclose(rgb[0, 0], [0.5, 0.0, 0.0], atol=1e-12)  # half the largest magnitude
    assert rgb[0, 1].max() == pytest.approx(1.0) and np.all(rgb[1] == 0.0)
    np.testing.assert_allclose(flow_to_rgb(flow, max_magnitude=1.0)[0, 0], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="flow"):
        flow_to_rgb(np.zeros((2, 2, 3)))


def test_group_accuracy_splits_by_class_group():
    labels = torch.tensor([0, 1, 4, 5])
    pred = torch.tensor([0, 2, 4, 4])
    acc = group_accuracy(pred, labels, ["appearance", "appearance", "motion", "motion"])
    assert acc == {"overall": 0.5, "appearance": 0.5, "motion": 0.5}
    acc = group_accuracy(torch.tensor([0, 1, 0, 5]), labels, ["appearance", "appearance", "motion", "motion"])
    assert acc["appearance"] == 1.0 and acc["motion"] == 0.5 and acc["overall"] == 0.75
