"""decode_video / write_video: round trip, backends agree, corrupt and truncated files raise VideoDecodeError."""
import numpy as np
import pytest

from deepnotes.video import VideoDecodeError, decode_video, video_info, write_video

pytestmark = pytest.mark.usefixtures("one_thread")


def pattern(T=6, H=32, W=48) -> np.ndarray:
    """Smooth colour ramps that move one pixel a frame: easy for any codec, distinct per frame."""
    t, y, x = np.meshgrid(np.arange(T), np.arange(H), np.arange(W), indexing="ij")
    rgb = np.stack([4 * (x + t), 6 * y, 128 + 60 * np.sin((x + y) / 6.0)], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    frames = pattern()
    return write_video(tmp_path_factory.mktemp("io") / "ramp.mp4", frames, fps=8), frames


@pytest.mark.parametrize("backend", ["pyav", "opencv", "auto"])
def test_round_trip_is_close(video, backend):
    path, frames = video
    decoded = decode_video(path, backend=backend)
    assert decoded.dtype == np.uint8 and decoded.shape == frames.shape
    error = np.abs(decoded.astype(int) - frames)
    assert error.mean() < 3.0 and np.percentile(error, 99) <= 12  # lossy codec: near, not equal


def test_pyav_and_opencv_agree(video):
    path, _ = video
    a, b = decode_video(path, "pyav"), decode_video(path, "opencv")
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b).max() <= 2  # same FFmpeg decoder, maybe a different YUV->RGB rounding


def test_video_info(video):
    path, frames = video
    info = video_info(path)
    assert (info["frames"], info["height"], info["width"]) == (len(frames), 32, 48)
    assert info["fps"] == pytest.approx(8.0)


@pytest.mark.parametrize("backend", ["pyav", "opencv", "auto"])
def test_corrupt_files_raise(tmp_path, video, backend):
    path, _ = video
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01not a video" * 64)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for bad in (garbage, truncated, empty, tmp_path / "missing.mp4"):
        with pytest.raises(VideoDecodeError, match=bad.name):
            decode_video(bad, backend=backend)
    assert issubclass(VideoDecodeError, RuntimeError)


def test_bad_arguments(tmp_path, video):
    path, frames = video
    with pytest.raises(ValueError, match="backend"):
        decode_video(path, backend="decord")
    with pytest.raises(TypeError, match="uint8"):
        write_video(tmp_path / "x.mp4", frames.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        write_video(tmp_path / "x.mp4", frames[..., :2])
    with pytest.raises(ValueError, match=".mp4"):
        write_video(tmp_path / "x.avi", frames)


def test_package_exports_resolve():
    import deepnotes.video as video
    from deepnotes.video.metrics import average_views

    data_names = ["decode_video", "write_video", "VideoDecodeError", "Sample", "read_annotations", "read_ucf101_split",
                  "sample_segments", "sample_clips", "resize_short", "multi_scale_crop", "random_flip", "center_crop",
                  "three_crop", "to_tensor", "VideoDataset", "OrderShapes", "compute_flow", "stack_flows",
                  "quantize_flow", "dequantize_flow", "extract_flows", "top_k_accuracy", "mean_class_accuracy",
                  "confusion_matrix", "average_views"]
    assert set(data_names) <= set(video.__all__) and all(callable(getattr(video, n)) for n in data_names)
    assert video.average_views is average_views
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        video.nothing


def test_mpeg4_fallback_and_fractional_fps(tmp_path, monkeypatch):
    import deepnotes.video.io as io

    frames = pattern()
    monkeypatch.setattr(io, "_encoder", lambda: ("mpeg4", "yuv420p", {}))  # FFmpeg builds without libx264
    path = write_video(tmp_path / "mpeg4.mp4", frames, fps=29.97)
    decoded = decode_video(path)
    assert decoded.shape == frames.shape and np.abs(decoded.astype(int) - frames).mean() < 6.0
    assert video_info(path)["fps"] == pytest.approx(29.97)
    with pytest.raises(ValueError, match="even height and width"):
        write_video(tmp_path / "odd.mp4", frames[:, :31])
