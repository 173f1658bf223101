"""Optical flow: shapes, sign convention on a translated texture, x/y stacking order, quantisation, extraction."""
import numpy as np
import pytest
import torch

from deepnotes.video import (FLOW_METHODS, compute_flow, dequantize_flow, extract_flows, load_flow, quantize_flow,
                             read_annotations, stack_flows, write_video)

pytestmark = pytest.mark.usefixtures("one_thread")


def texture(H=96, W=96, seed=0) -> np.ndarray:
    """A smooth random grey texture (blurred noise), 0..255."""
    import cv2

    noise = np.random.default_rng(seed).random((H, W)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    return cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def translated(T=4, S=32, dx=2, dy=1) -> np.ndarray:
    """Frames (T, S, S, 3) of a texture whose content moves by (dx, dy) pixels a frame (right, down)."""
    big = texture()
    frames = [big[30 - dy * t:30 - dy * t + S, 30 - dx * t:30 - dx * t + S] for t in range(T)]
    return np.repeat(np.stack(frames)[..., None], 3, axis=-1)


@pytest.mark.parametrize("method", FLOW_METHODS)
def test_translation_gives_the_shift(method):
    frames = translated(T=5, dx=2, dy=1)
    flow = compute_flow(frames, method=method)
    assert flow.shape == (4, 32, 32, 2) and flow.dtype == np.float32  # T frames -> T - 1 fields
    inner = flow[:, 8:24, 8:24]
    assert np.abs(inner[..., 0].mean() - 2.0) < 0.1 and np.abs(inner[..., 1].mean() - 1.0) < 0.1
    left_up = compute_flow(frames[::-1].copy(), method=method)[:, 8:24, 8:24]  # reversed: content moves back
    assert np.abs(left_up[..., 0].mean() + 2.0) < 0.1 and np.abs(left_up[..., 1].mean() + 1.0) < 0.1


def test_grey_and_torch_input():
    frames = translated(T=3)
    grey = compute_flow(frames[..., 0])
    assert np.allclose(grey, compute_flow(torch.from_numpy(frames)), atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        compute_flow(frames.astype(np.float32))
    with pytest.raises(ValueError, match="at least 2 frames"):
        compute_flow(frames[:1])
    with pytest.raises(ValueError, match="method"):
        compute_flow(frames, method="tvl1")


@pytest.mark.parametrize("backend", [np, torch])
def test_stack_order_is_x1_y1_x2_y2(backend):
    T, H, W = 12, 3, 4
    flow = np.zeros((T - 1, H, W, 2), np.float32)
    flow[..., 0] = np.arange(T - 1)[:, None, None]  # x of field t: t
    flow[..., 1] = 100 + np.arange(T - 1)[:, None, None]  # y of field t: 100 + t
    flow = flow if backend is np else torch.from_numpy(flow)
    stacked = stack_flows(flow, start=1, length=10)
    assert tuple(stacked.shape) == (20, H, W)  # L = 10 -> 20 channels
    expected = [v for t in range(1, 11) for v in (t, 100 + t)]
    assert [float(stacked[c, 0, 0]) for c in range(20)] == expected
    with pytest.raises(ValueError, match="within the 11 flow fields"):
        stack_flows(flow, start=2, length=10)


def test_quantisation_round_trip_within_a_quantum():
    bound = 20.0
    flow = np.random.default_rng(0).uniform(-bound, bound, size=(3, 8, 8, 2)).astype(np.float32)
    q = quantize_flow(flow, bound)
    assert q.dtype == np.uint8
    back = dequantize_flow(q, bound)
    quantum = 2 * bound / 255
    assert np.abs(back - flow).max() <= quantum / 2 + 1e-5  # rounding: half a quantum
    assert quantize_flow(np.array([-bound, 0.0, bound, 3 * bound])).tolist() == [0, 128, 255, 255]  # clipped
    assert np.allclose(dequantize_flow(np.array([0, 255], np.uint8), 5.0), [-5.0, 5.0])
    with pytest.raises(ValueError, match="bound"):
        quantize_flow(flow, bound=0.0)


def test_extract_flows_is_resumable_and_skips_corrupt(tmp_path):
    root = tmp_path / "videos"
    frames = translated(T=4)
    write_video(root / "a" / "one.mp4", frames)
    write_video(root / "b" / "two.mp4", frames[::-1].copy())
    (root / "b" / "bad.mp4").write_bytes(b"not a video")
    lst = tmp_path / "list.txt"
    lst.write_text("a/one.mp4 0\nb/bad.mp4 1\nb/two.mp4 1\n")
    out = tmp_path / "flow"
    with pytest.warns(RuntimeWarning, match="bad.mp4"):
        first = extract_flows(lst, out, root=root, method="dis", progress=False)
    assert (first.computed, first.skipped) == (2, 0) and [p.name for p in first.failed] == ["bad.mp4"]
    flow = load_flow(out / "a" / "one.npz")
    assert flow.shape == (3, 32, 32, 2)
    assert np.abs(flow[:, 8:24, 8:24, 0].mean() - 2.0) < 0.2
    listed = read_annotations(first.list_path, root=out)
    assert [(s.path.relative_to(out).as_posix(), s.label) for s in listed] == [("a/one.npz", 0), ("b/two.npz", 1)]
    with np.load(out / "b" / "two.npz") as data:
        assert data["flow"].dtype == np.uint8 and float(data["bound"]) == 20.0 and str(data["method"]) == "dis"
    (out / "b" / "two.npz").unlink()  # an interrupted run: one video left to do
    with pytest.warns(RuntimeWarning, match="bad.mp4"):
        second = extract_flows(lst, out, root=root, method="dis", progress=True)
    assert (second.computed, second.skipped, len(second.failed)) == (1, 1, 1)
    assert read_annotations(second.list_path) == read_annotations(first.list_path)
