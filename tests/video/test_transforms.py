"""Spatial transforms: sizes, crop positions, flips (flow x negated), normalisation and layout."""
import pytest
import torch

from deepnotes.video import (IMAGENET_MEAN, IMAGENET_STD, center_crop, frames_from_numpy, multi_scale_crop,
                             random_flip, resize_short, three_crop, to_tensor)


def coords(T=2, C=3, H=40, W=60):
    """frames[t, c, y, x] = 1000 t + 100 c + ... encodes where each pixel came from."""
    t, c, y, x = torch.meshgrid(torch.arange(T), torch.arange(C), torch.arange(H), torch.arange(W), indexing="ij")
    return (t * 100000 + c * 10000 + y * 100 + x).float()


def test_frames_from_numpy_layout():
    array = torch.randint(0, 255, (4, 5, 6, 3), dtype=torch.uint8).numpy()
    frames = frames_from_numpy(array)
    assert frames.shape == (4, 3, 5, 6) and frames.dtype == torch.float32
    assert frames[2, 1, 3, 4] == float(array[2, 3, 4, 1])


def test_resize_short_keeps_aspect():
    assert resize_short(torch.rand(3, 3, 40, 60), 20).shape == (3, 3, 20, 30)
    assert resize_short(torch.rand(3, 3, 60, 40), 20).shape == (3, 3, 30, 20)
    constant = torch.full((2, 3, 40, 60), 7.0)
    assert torch.allclose(resize_short(constant, 24), torch.full((2, 3, 24, 36), 7.0))


def test_center_and_three_crop_positions():
    frames = coords()
    crop = center_crop(frames, 20)
    assert crop.shape == (2, 3, 20, 20) and crop[0, 0, 0, 0] == 10 * 100 + 20  # top 10, left 20
    crops = three_crop(frames, 40)  # W > H: along the width, left / middle / right
    assert [int(c[0, 0, 0, 0]) for c in crops] == [0, 10, 20]
    tall = three_crop(coords(H=60, W=40), 40)
    assert [int(c[0, 0, 0, 0]) for c in tall] == [0, 1000, 2000]
    with pytest.raises(ValueError, match="smaller than size"):
        center_crop(frames, 50)


def test_multi_scale_crop_positions_and_sizes():
    frames = coords(H=64, W=80)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = multi_scale_crop(frames, 32, generator=g)
        assert out.shape == (2, 3, 32, 32)
        assert torch.allclose(out[1] - out[0], torch.full_like(out[0], 100000.0))  # the same crop in every frame
    # scale 0.5 of the short side 64 = 32 = size: no resize, so the crop shows where it was taken.
    # steps (80 - 32) // 4 = 12, (64 - 32) // 4 = 8: (top, left) in 4 corners + centre
    corners = set()
    for _ in range(100):
        out = multi_scale_crop(frames, 32, scales=(0.5,), generator=g)
        corners.add(divmod(int(out[0, 0, 0, 0]), 100))
    assert corners == {(0, 0), (0, 48), (32, 0), (32, 48), (16, 24)}
    with pytest.raises(ValueError, match="scales"):
        multi_scale_crop(frames, 32, scales=(1.5,))


def test_random_flip_and_flow_sign():
    frames = coords(C=4)
    g = torch.Generator().manual_seed(0)
    flips = [random_flip(frames, g) for _ in range(40)]
    flipped = [f for f in flips if not torch.equal(f, frames)]
    assert 0 < len(flipped) < 40 and all(torch.equal(f, frames.flip(-1)) for f in flipped)
    flow = random_flip(frames, generator=g, p=1.0, flow=True)
    assert torch.equal(flow[:, 0::2], -frames.flip(-1)[:, 0::2]) and torch.equal(flow[:, 1::2], frames.flip(-1)[:, 1::2])
    with pytest.raises(ValueError, match="even channel"):
        random_flip(coords(C=3), p=1.0, flow=True)


def test_to_tensor_normalises_and_moves_time():
    frames = torch.rand(4, 3, 5, 6) * 255
    out = to_tensor(frames)
    assert out.shape == (3, 4, 5, 6)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[:, 2], (frames[2] - mean[:, None, None]) / std[:, None, None])
    with pytest.raises(TypeError, match="float tensor"):
        to_tensor(frames.to(torch.uint8))
    with pytest.raises(ValueError, match="1 or 3 values"):
        to_tensor(frames, mean=(0.0, 0.0))
