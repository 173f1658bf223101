"""Training and multi-view testing: a tiny end-to-end run on .mp4 files, exact resume, the view average."""
import math

import pytest
import torch
from torch import nn

from deepnotes.artifacts import ArtifactStore
from deepnotes.video.annotations import read_annotations
from deepnotes.video.dataset import VideoDataset
from deepnotes.video.synthetic import OrderShapes
from deepnotes.video.train import (VideoTraining, build_video_model, evaluate_video, load_video_model,
                                   save_video_model, train_video_model, trained_video_model)

TINY = dict(depth=10, width=4, n_segments=4, batch_size=4)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """8 OrderShapes clips (4 frames of 16 px) as .mp4 files and their annotation list."""
    folder = tmp_path_factory.mktemp("videos")
    data = OrderShapes(8, frames=4, size=16, seed=0)
    return data, data.write_videos(folder)


def test_end_to_end_on_mp4_files(videos, tmp_path):
    data, listing = videos
    samples = read_annotations(listing, root=listing.parent)
    train = VideoDataset(samples, n_segments=4, size=16, train=True, seed=0)
    training = VideoTraining(model="tsm", steps=3, lr=1e-3, **TINY)
    model = build_video_model(training, len(data.classes), seed=0)
    info = train_video_model(model, train, training, checkpoint_dir=tmp_path / "ckpt", metrics_path=tmp_path / "m.jsonl")
    assert info["steps"] == 3 and math.isfinite(info["final_loss"])
    assert (tmp_path / "ckpt" / "last.safetensors").is_file()

    test = VideoDataset(samples, n_segments=4, size=16, train=False, num_clips=2, crops=3)
    out = evaluate_video(model, test, mode="prob", batch_size=3)
    N, K = len(samples), len(data.classes)
    assert out["views"] == 6 and out["scores"].shape == (N, K) and out["labels"].tolist() == [s.label for s in samples]
    assert torch.allclose(out["scores"].sum(1), torch.ones(N, dtype=out["scores"].dtype), atol=1e-5)  # mean of softmaxes
    assert out["confusion"].shape == (K, K) and int(out["confusion"].sum()) == N
    assert 0.0 <= out["top1"] <= out["top5"] <= 1.0 and 0.0 <= out["mean_class"] <= 1.0


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    data = OrderShapes(16, frames=4, size=16, seed=1)
    training = VideoTraining(model="tsm", steps=4, lr=1e-2, **TINY)
    straight = build_video_model(training, 8, seed=3)
    train_video_model(straight, data, training, seed=5)
    resumed = build_video_model(training, 8, seed=3)
    first = train_video_model(resumed, data, training, seed=5, checkpoint_dir=tmp_path, stop_after=2)
    assert first["steps"] == 2
    again = build_video_model(training, 8, seed=3)  # a fresh process would start from new weights
    second = train_video_model(again, data, training, seed=5, checkpoint_dir=tmp_path)
    assert second["resumed_from"] == 2 and second["steps"] == 4
    for (name, a), b in zip(straight.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_run_depends_on_its_seed_alone_and_leaves_the_global_rng():
    data = OrderShapes(8, frames=4, size=16, seed=6)
    training = VideoTraining(model="tsn", steps=2, dropout=0.5, **TINY)  # dropout draws random numbers
    a, b = build_video_model(training, 8), build_video_model(training, 8)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    train_video_model(a, data, training, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(5)  # another global state: the run must not depend on it
    train_video_model(b, data, training, seed=7)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


class _Views(torch.utils.data.Dataset):
    """Test items (V, C, T, H, W) built from OrderShapes clips: view v is the clip shifted by v pixels."""

    def __init__(self, data, n_views):
        self.data, self.n_views = data, n_views

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        clip, label = self.data[i]
        return torch.stack([clip.roll(v, dims=-1) for v in range(self.n_views)]), label


@pytest.mark.parametrize("mode", ["prob", "score"])
def test_one_view_reproduces_the_single_clip_scores(mode):
    data = OrderShapes(6, frames=4, size=16, seed=2)
    model = build_video_model(VideoTraining(model="r3d", **TINY), 8, seed=0).eval()
    with torch.no_grad():
        logits = model(data.clips.float() / 255)
    expected = logits.softmax(1) if mode == "prob" else logits
    single = evaluate_video(model, data, mode=mode, batch_size=4)  # items (C, T, H, W)
    one_view = evaluate_video(model, _Views(data, 1), mode=mode, batch_size=4)  # items (1, C, T, H, W)
    for out in (single, one_view):
        assert out["views"] == 1
        torch.testing.assert_close(out["scores"].float(), expected, rtol=1e-5, atol=1e-6)
        assert out["top1"] == pytest.approx(float((logits.argmax(1) == data.labels).float().mean()))


def test_views_are_averaged_per_video_in_order():
    data = OrderShapes(4, frames=4, size=16, seed=3)
    model = build_video_model(VideoTraining(model="tsn", **TINY), 8, seed=1).eval()
    views = _Views(data, 3)
    with torch.no_grad():
        per_view = torch.stack([model(views[i][0]) for i in range(len(views))])  # (N, V, K)
    prob = evaluate_video(model, views, mode="prob", batch_size=3)["scores"].float()
    score = evaluate_video(model, views, mode="score", batch_size=3)["scores"].float()
    torch.testing.assert_close(prob, per_view.softmax(-1).mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(score, per_view.mean(1), rtol=1e-5, atol=1e-6)


def test_the_store_trains_once_and_reloads_the_same_weights(tmp_path):
    data = OrderShapes(8, frames=4, size=16, seed=4)
    store = ArtifactStore(tmp_path)
    training = VideoTraining(model="tsn", steps=2, **TINY)
    first, info = trained_video_model(store, training, data, num_classes=8, seed=0)
    second, again = trained_video_model(store, training, data, num_classes=8, seed=0)
    assert (store.trained, store.hits) == (1, 1) and info["steps"] == again["steps"] == 2
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    trained_video_model(store, training, data, num_classes=8, seed=1)  # another seed: another entry
    assert store.trained == 2


def test_a_saved_model_rebuilds_from_its_folder(tmp_path):
    training = VideoTraining(model="tam", **TINY)
    model = build_video_model(training, 3, seed=0)
    save_video_model(tmp_path, model, training, ["a", "b", "c"], size=16)
    loaded, meta = load_video_model(tmp_path)
    assert meta["model"] == "tam" and meta["classes"] == ["a", "b", "c"] and meta["n_segments"] == 4
    x = torch.rand(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_video_model(tmp_path / "missing")


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=None, epochs=None), "steps or epochs"),
    (dict(optimizer="rmsprop"), "optimizer"),
    (dict(lr=0.0), "lr"),
    (dict(batch_size=0), "batch_size"),
    (dict(schedule="linear"), "schedule"),
    (dict(dropout=1.0), "dropout"),
])
def test_bad_training_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VideoTraining(**kwargs)


def test_bad_inputs_fail_at_the_boundary():
    data = OrderShapes(4, frames=4, size=16, seed=5)
    model = build_video_model(VideoTraining(model="tsn", **TINY), 8)
    with pytest.raises(ValueError, match="mode"):
        evaluate_video(model, data, mode="max")
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train_video_model(model, data, VideoTraining(model="tsn", **{**TINY, "batch_size": 8}))
    with pytest.raises(TypeError, match="VideoTraining"):
        train_video_model(model, data, {"steps": 1})
    with pytest.raises(ValueError, match="num_classes"):
        build_video_model(VideoTraining(**TINY), 0)
    assert isinstance(model, nn.Module)
