"""OrderShapes: reversal pairing, motion directions as named, variants' class definitions, .mp4 round trip."""
import math

import numpy as np
import pytest
import torch

from deepnotes.video import ORDER_CLASSES, SHAPES, OrderShapes, decode_video, read_annotations
from deepnotes.video.synthetic import _render

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train():
    return OrderShapes(256, seed=0)


def masks(clips: torch.Tensor) -> torch.Tensor:
    """(n, T, S, S) bool: pixels far from the clip's background colour (the shape)."""
    x = clips.float()
    background = x.flatten(2).median(dim=2).values[:, :, None, None, None]  # (n, 3, 1, 1, 1)
    return (x - background).abs().sum(1) > 100


def centroids(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    grid = torch.arange(mask.shape[-1], dtype=torch.float32)
    area = mask.sum((-2, -1)).clamp(min=1)
    return (mask.sum(-2) * grid).sum(-1) / area, (mask.sum(-1) * grid).sum(-1) / area  # x, y: (n, T)


def test_shapes_dtypes_balance_and_determinism(train):
    assert train.clips.shape == (256, 3, 8, 32, 32) and train.clips.dtype == torch.uint8
    assert train.classes == ORDER_CLASSES and train.pairs is None
    assert torch.equal(train.labels.bincount(), torch.full((8,), 32))
    clip, label = train[3]
    assert clip.dtype == torch.float32 and clip.shape == (3, 8, 32, 32) and 0 <= clip.min() and clip.max() <= 1
    assert label == int(train.labels[3])
    state = torch.get_rng_state()
    again = OrderShapes(256, seed=0)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(again.clips, train.clips) and torch.equal(again.labels, train.labels)
    assert not torch.equal(OrderShapes(256, seed=1).clips, train.clips)
    assert set(train.shapes.tolist()) == set(range(len(SHAPES)))


def test_test_split_pairs_every_clip_with_its_exact_reversal():
    test = OrderShapes(64, seed=0, split="test")
    assert torch.equal(test.pairs, torch.arange(64).reshape(32, 2))
    first, second = test.clips[0::2], test.clips[1::2]
    assert torch.equal(second, first.flip(2))  # time is dim 2 of (n, 3, T, S, S)
    assert torch.equal(test.labels[1::2], test.labels[0::2] ^ 1)  # the pair partner: left <-> right, ...
    assert all(test.reverse_label(c) == c ^ 1 for c in range(8))
    assert not torch.equal(test.clips[:8], OrderShapes(8, seed=0).clips)  # train and test draw apart


def test_translations_move_the_named_way(train):
    x, y = centroids(masks(train.clips))
    step = {0: (x, -1), 1: (x, 1), 2: (y, -1), 3: (y, 1)}  # left, right, up (y down the image), down
    for label, (coord, sign) in step.items():
        rows = train.labels == label
        speed = sign * coord[rows].diff(dim=1)  # px per frame along the named direction
        assert speed.mean() > 1.8 and (speed.mean(1) > 1.0).all()
        other = y if coord is x else x
        assert other[rows].diff(dim=1).abs().mean() < 0.3


def test_growing_grows_and_rotation_convention(train):
    area = masks(train.clips).sum((-2, -1)).float()
    assert (area[train.labels == 6, -1] > 3 * area[train.labels == 6, 0]).all()
    assert (area[train.labels == 7, 0] > 3 * area[train.labels == 7, -1]).all()
    # a triangle at theta = 0 points along +x, at +pi/2 along +y (down): a growing angle turns clockwise
    pose = torch.full((1, 2), 16.0)
    clip = _render(torch.tensor([0]), torch.ones(1, 3), torch.zeros(1, 3), pose, pose,
                   torch.tensor([[0.0, math.pi / 2]]), torch.full((1, 2), 10.0), 32, torch.Generator())
    x, y = centroids(clip[:, 0] > 128)
    assert x[0, 0] < 16 - 0.3 and abs(y[0, 0] - 16) < 0.2  # centroid sits behind the tip
    assert y[0, 1] < 16 - 0.3 and abs(x[0, 1] - 16) < 0.2


def test_clockwise_triangles_turn_clockwise(train):
    mask = masks(train.clips)
    for label, sign in ((4, 1.0), (5, -1.0)):
        rows = ((train.labels == label) & (train.shapes == 0)).nonzero().flatten()
        assert len(rows) >= 3
        for i in rows:
            angles = []
            for t in range(8):
                ys, xs = mask[i, t].nonzero(as_tuple=True)
                cx, cy = xs.float().mean(), ys.float().mean()
                far = ((xs - cx) ** 2 + (ys - cy) ** 2).argmax()  # the tip
                angles.append(math.atan2(float(ys[far] - cy), float(xs[far] - cx)))
            turns = np.angle(np.exp(1j * np.diff(angles)))  # wrapped to (-pi, pi]
            assert sign * np.median(turns) > math.radians(8)  # the tip finder may slip on a frame


def test_scene_classes_are_static_appearance():
    scene = OrderShapes(320, seed=0, variant="scene")
    assert scene.classes[:2] == ("triangle-warm", "triangle-cool") and len(scene.classes) == 8
    assert torch.equal(scene.shapes, scene.labels // 2)
    for c in range(8):
        assert len(set(scene.motions[scene.labels == c].tolist())) >= 6  # motion drawn apart from the class
    back = scene.clips.float().flatten(2).median(dim=2).values  # (n, 3): background colour
    warm = scene.labels % 2 == 0
    assert (back[warm, 0] > back[warm, 2]).all() and (back[~warm, 2] > back[~warm, 0]).all()
    test = OrderShapes(16, variant="scene", split="test")
    assert torch.equal(test.labels[1::2], test.labels[0::2]) and scene.group(3) == "appearance"


def test_mixed_groups():
    mixed = OrderShapes(320, seed=0, variant="mixed")
    assert [mixed.group(c) for c in range(8)] == ["appearance"] * 4 + ["motion"] * 4
    appearance = mixed.labels < 4
    assert torch.equal(mixed.motions[~appearance], mixed.labels[~appearance] - 4)  # left, right, up, down
    assert set(mixed.motions[appearance].tolist()) == {0, 1, 2, 3}  # appearance classes move at random
    for c in range(4):
        assert len(set(mixed.motions[mixed.labels == c].tolist())) == 4
    x = mixed.clips.float()
    shape_colour = torch.stack([x[i][:, masks(x[i:i + 1].to(torch.uint8))[0]].mean(1) for i in range(len(mixed))])
    red, blue = shape_colour[mixed.labels == 0], shape_colour[mixed.labels == 2]  # (1, .15, .15), (.2, .35, 1)
    assert (red[:, 0] > 170).all() and (red[:, 1:] < 100).all() and (blue[:, 2] > 170).all()
    palette = 255 * torch.tensor([[1.0, 0.15, 0.15], [0.15, 0.9, 0.15], [0.2, 0.35, 1.0], [1.0, 1.0, 0.15]])
    motion_colour = shape_colour[~appearance]
    assert torch.cdist(motion_colour, palette).min() > 60  # motion classes never wear an appearance colour
    test = OrderShapes(32, variant="mixed", split="test")
    assert [test.reverse_label(c) for c in range(8)] == [0, 1, 2, 3, 5, 4, 7, 6]
    assert torch.equal(test.labels[1::2], torch.tensor([test.reverse_label(int(c)) for c in test.labels[0::2]]))
    assert OrderShapes(8).group(0) == "motion"


def test_write_videos_round_trip(tmp_path):
    data = OrderShapes(6, seed=2, split="test")
    path = data.write_videos(tmp_path, fps=8)
    samples = read_annotations(path, root=tmp_path, num_classes=8)
    assert [s.label for s in samples] == data.labels.tolist()
    assert samples[0].path.suffix == ".mp4" and data.classes[data.labels[0]] in samples[0].path.parts
    for i, sample in enumerate(samples):
        frames = decode_video(sample.path)  # (T, H, W, 3)
        original = data.clips[i].permute(1, 2, 3, 0).numpy()
        assert frames.shape == original.shape
        error = np.abs(frames.astype(int) - original)
        assert error.mean() < 4 and np.percentile(error, 99) < 40  # lossy: close, edges may ring


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n must be"), (dict(n=4, frames=1), "frames"), (dict(n=4, size=8), "size"),
    (dict(n=4, variant="colour"), "variant"), (dict(n=4, split="val"), "split"),
    (dict(n=5, split="test"), "even"), (dict(n=4, frames=64), "too small"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OrderShapes(**kwargs)
