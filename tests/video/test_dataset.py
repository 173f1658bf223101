"""VideoDataset over real .mp4 files: clip shapes, view order, corrupt-file skipping, frame folders, flow input."""
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from deepnotes.video import (OrderShapes, Sample, VideoDataset, extract_flows, load_flow, read_annotations,
                             write_video)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes_list(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    data = OrderShapes(6, seed=0, split="test")
    return data.write_videos(folder), folder, data


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """A 16-frame, 32x64 video whose red channel is 12 t (time) and green 3 x (column): views identify themselves."""
    T, H, W = 16, 32, 64
    t, y, x = np.meshgrid(np.arange(T), np.arange(H), np.arange(W), indexing="ij")
    frames = np.stack([12 * t + 10, 3 * x + 10, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    return write_video(tmp_path_factory.mktemp("coded") / "coded.mp4", frames)


def test_train_items(shapes_list):
    path, folder, data = shapes_list
    dataset = VideoDataset(path, root=folder, n_segments=4, size=28, train=True, seed=0)
    assert len(dataset) == 6 and dataset.labels == data.labels.tolist() and dataset.views == 1
    clip, label = dataset[0]
    assert clip.shape == (3, 4, 28, 28) and clip.dtype == torch.float32 and label == int(data.labels[0])
    again = VideoDataset(path, root=folder, n_segments=4, size=28, train=True, seed=0)
    assert torch.equal(again[0][0], clip)  # the seed fixes sampling, crops and flips
    dense = VideoDataset(path, root=folder, n_segments=1, clip_len=4, frame_interval=2, size=32, train=True)
    assert dense[1][0].shape == (3, 4, 32, 32)
    batch, labels = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch.shape == (3, 3, 4, 28, 28) and labels.tolist() == data.labels[:3].tolist()


def test_test_views_are_clip_major(coded):
    # 2 clips x 3 crops of 1 segment of 4 frames: a 3D-style dense clip, evenly spaced in time
    dataset = VideoDataset([Sample(coded, 0)], n_segments=1, clip_len=4, frame_interval=2, num_clips=2, crops=3,
                           train=False, size=32)
    views, label = dataset[0]
    assert views.shape == (6, 3, 4, 32, 32) and label == 0
    std, mean = torch.tensor([58.395, 57.12]), torch.tensor([123.675, 116.28])
    pixels = views[:, :2, :, 16, 0] * std[:, None] + mean[:, None]  # (V, 2 channels, T) in 0..255
    t0 = (pixels[:, 0, 0] - 10) / 12  # first frame of each view
    x0 = (pixels[:, 1, 0] - 10) / 3  # left column of each view's crop
    # clips start at round(i * (16 - 8) / 1) = 0, 8; three-crop of a 32x64 frame: left 0, 16, 32
    assert torch.allclose(t0, torch.tensor([0.0, 0, 0, 8, 8, 8]), atol=0.3)
    assert torch.allclose(x0, torch.tensor([0.0, 16, 32, 0, 16, 32]), atol=1.0)
    assert torch.allclose((pixels[0, 0] - 10) / 12, torch.tensor([0.0, 2, 4, 6]), atol=0.3)  # frame_interval 2
    # TSN test: 4 segment centres (2, 6, 10, 14), 2 views per segment at 1/4 and 3/4: 1, 5, 9, 13 | 3, 7, 11, 15
    tsn = VideoDataset([Sample(coded, 0)], n_segments=4, num_clips=2, crops=1, train=False, size=32)
    views, _ = tsn[0]
    assert views.shape == (2, 3, 4, 32, 32)
    t = (views[:, 0, :, 16, 16] * 58.395 + 123.675 - 10) / 12
    assert torch.allclose(t, torch.tensor([[1.0, 5, 9, 13], [3, 7, 11, 15]]), atol=0.3)


def test_corrupt_videos_are_skipped_and_counted(shapes_list, tmp_path):
    path, folder, data = shapes_list
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00junk" * 100)
    truncated = tmp_path / "truncated.mp4"
    good = folder / read_annotations(path)[0].path
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    samples = [Sample(good, 0), Sample(garbage, 1), Sample(truncated, 2), Sample(folder / read_annotations(path)[3].path, 3)]
    dataset = VideoDataset(samples, n_segments=2, size=32, train=True)
    with pytest.warns(RuntimeWarning, match="unreadable video") as record:
        labels = [dataset[i][1] for i in range(4)]
    assert labels == [0, 3, 3, 3]  # a bad item is replaced by the next readable one
    messages = " ".join(str(w.message) for w in record)
    assert len(record) == 2 and str(garbage) in messages and str(truncated) in messages  # once per file
    assert dataset.skipped[str(garbage)] == 1 and dataset.skipped[str(truncated)] == 2 and dataset.skipped_count == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known bad file is skipped quietly next epoch, and counted again
        epoch = [y for _, y in DataLoader(dataset, batch_size=2)]
    assert torch.cat(epoch).tolist() == [0, 3, 3, 3] and dataset.skipped_count == 6
    fresh = VideoDataset(samples, n_segments=2, size=32)
    assert fresh.check() == [garbage, truncated] and fresh.skipped_count == 0
    with pytest.raises(RuntimeError, match="none of the 2 videos"), pytest.warns(RuntimeWarning):
        VideoDataset([Sample(garbage, 0), Sample(truncated, 0)], size=32)[0]


def test_frame_folders(tmp_path):
    import cv2

    frames = OrderShapes(1, seed=3).clips[0].permute(1, 2, 3, 0).numpy()  # (T, H, W, 3) RGB
    folder = tmp_path / "frames" / "clip0"
    folder.mkdir(parents=True)
    for t, rgb in enumerate(frames):
        cv2.imwrite(str(folder / f"img_{t + 1:05d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    lst = tmp_path / "frames.txt"
    lst.write_text(f"clip0 {len(frames)} 5\nmissing 8 1\n")
    dataset = VideoDataset(lst, root=tmp_path / "frames", kind="frames", n_segments=8, size=32, train=False,
                           filename_tmpl="img_{:05d}.png")
    clip, label = dataset[0]
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
    pixels = clip[0] * std[:, None, None, None] + mean[:, None, None, None]  # (3, T, H, W), lossless png
    resized = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(37, 37),
                                              mode="bilinear", antialias=True)[..., 2:34, 2:34]  # resize 37, crop 32
    assert label == 5 and torch.allclose(pixels.permute(1, 0, 2, 3), resized, atol=1e-3)
    with pytest.warns(RuntimeWarning, match="missing"):
        assert dataset[1][1] == 5


def test_flow_modality(shapes_list, tmp_path):
    path, folder, data = shapes_list
    extraction = extract_flows(path, tmp_path / "flow", root=folder, progress=False)
    flows = VideoDataset(extraction.list_path, root=tmp_path / "flow", modality="flow", flow_length=3, n_segments=2,
                         size=32, train=False, num_clips=1)
    clip, label = flows[0]
    assert clip.shape == (1, 6, 2, 32, 32) and label == int(data.labels[0])  # 2L channels, n_segments steps
    # 7 fields, 2 segments of (7 - 3 + 1) / 2 = 2.5: snippets start at floor(1.25) = 1 and floor(3.75) = 3
    stored = torch.from_numpy(load_flow(extraction.list_path.parent / read_annotations(extraction.list_path)[0].path))
    resized = torch.nn.functional.interpolate(stored.permute(0, 3, 1, 2), size=(37, 37), mode="bilinear",
                                              antialias=True)[..., 2:34, 2:34]  # (7, 2, 32, 32)
    expected = torch.stack([resized[1:4].reshape(6, 32, 32), resized[3:6].reshape(6, 32, 32)], dim=1) / 20.0
    assert torch.allclose(clip[0], expected, atol=1e-5)  # x1, y1, x2, y2, x3, y3 per segment, / bound
    on_the_fly = VideoDataset(path, root=folder, modality="flow", flow_length=3, n_segments=2, size=32, train=False)
    assert (on_the_fly[0][0] - clip).abs().max() <= 2 * 20.0 / 255 / 20.0 + 1e-5  # within one quantum
    train = VideoDataset(path, root=folder, modality="flow", flow_length=3, n_segments=2, size=32)
    assert train[0][0].shape == (6, 2, 32, 32)
    good = flows.samples[0].path
    broken = tmp_path / "broken.npz"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    mixed = VideoDataset([Sample(broken, 1), Sample(good, 2)], modality="flow", flow_length=3, n_segments=2, size=32)
    with pytest.warns(RuntimeWarning, match="unreadable flow file"):
        assert mixed[0][1] == 2 and mixed.skipped_count == 1


def test_bad_arguments(shapes_list):
    path, folder, _ = shapes_list
    with pytest.raises(ValueError, match="crops"):
        VideoDataset(path, root=folder, crops=2)
    with pytest.raises(ValueError, match="modality"):
        VideoDataset(path, root=folder, modality="depth")
    with pytest.raises(ValueError, match="clip_len and frame_interval must be 1"):
        VideoDataset(path, root=folder, modality="flow", clip_len=2)
    with pytest.raises(ValueError, match="n_segments"):
        VideoDataset(path, root=folder, n_segments=0)
    with pytest.raises(ValueError, match="non-empty"):
        VideoDataset([])
    with pytest.raises(ValueError, match="backend"):
        VideoDataset(path, root=folder, backend="decord")
    with pytest.raises(ValueError, match="not frame folders"):
        VideoDataset([Sample(folder, 0, 8)], modality="flow")
