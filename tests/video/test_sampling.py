"""TSN and dense sampling against mmaction2 SampleFrames' formulas (v1.2), worked by hand."""
import pytest
import torch

from deepnotes.video import sample_clips, sample_segments, sample_views


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_train_offsets_fall_inside_their_segments_and_cover_them():
    # F = 80, 8 segments: a = 80 // 8 = 10, index i in [10 i, 10 i + 9], every offset drawn
    g = gen()
    draws = torch.stack([sample_segments(80, 8, train=True, generator=g) for _ in range(400)])  # (400, 8)
    assert draws.dtype == torch.long and draws.shape == (400, 8)
    low = torch.arange(8) * 10
    assert ((draws >= low) & (draws < low + 10)).all()
    assert all(set((draws[:, i] - low[i]).tolist()) == set(range(10)) for i in range(8))


def test_test_mode_takes_segment_centres():
    assert sample_segments(80, 8, train=False).tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    # F = 10: centres (i + 1/2) 10/8 = 0.625, 1.875, ... truncated
    assert sample_segments(10, 8, train=False).tolist() == [0, 1, 3, 4, 5, 6, 8, 9]


def test_fewer_frames_than_segments():
    # train, F = 5 < 8: a = 0 and F <= max(8, 1), so o_i = round(i * 5/8), halves to even
    assert sample_segments(5, 8, train=True, generator=gen()).tolist() == [0, 1, 1, 2, 2, 3, 4, 4]
    # test: floor((i + 1/2) * 5/8)
    assert sample_segments(5, 8, train=False).tolist() == [0, 0, 1, 2, 2, 3, 4, 4]


def test_short_segments_draw_sorted_offsets():
    # clip_len 4, F = 10, 8 clips: a = 7 // 8 = 0 but F > max(8, 4): sorted offsets in 0..6
    for seed in range(20):
        inds = sample_clips(10, 4, 1, 8, train=True, generator=gen(seed))
        offsets = inds[:, 0]
        assert inds.shape == (8, 4) and (offsets.diff() >= 0).all() and offsets.max() <= 6
        assert torch.equal(inds, offsets[:, None] + torch.arange(4))


def test_dense_3d_test_clips_are_evenly_spaced():
    # F = 100, 16 x 2: ori = 32, max offset 68, three clips at round(i * 68 / 2) = 0, 34, 68
    inds = sample_clips(100, 16, 2, 3, train=False)
    assert inds[:, 0].tolist() == [0, 34, 68]
    assert torch.equal(inds[1], 34 + 2 * torch.arange(16))
    assert sample_clips(100, 16, 2, 1, train=False)[0, 0] == 34  # one clip: the middle, max_offset // 2


def test_dense_train_clip_and_loop_out_of_range():
    inds = sample_clips(100, 8, 4, 1, train=True, generator=gen())
    assert 0 <= inds[0, 0] <= 100 - 32 and torch.equal(inds[0], inds[0, 0] + 4 * torch.arange(8))
    # F = 10 < ori = 16: offset 0, indices wrap around ("loop")
    assert sample_clips(10, 8, 2, 1, train=False)[0].tolist() == [0, 2, 4, 6, 8, 0, 2, 4]


def test_views():
    assert torch.equal(sample_views(80, 8, train=False)[0], sample_segments(80, 8, train=False))
    # 4 segments of 20 frames, 2 views: view c at 20 i + (c + 1/2) 10
    views = sample_views(80, n_segments=4, num_clips=2, train=False)
    assert views.tolist() == [[5, 25, 45, 65], [15, 35, 55, 75]]
    dense = sample_views(100, n_segments=1, clip_len=16, frame_interval=2, num_clips=3, train=False)
    assert torch.equal(dense, sample_clips(100, 16, 2, 3, train=False))
    train = sample_views(80, n_segments=4, clip_len=2, num_clips=5, train=True, generator=gen())
    assert train.shape == (1, 8)  # training: one view of n_segments * clip_len frames
    snippets = train.reshape(4, 2)
    assert torch.equal(snippets[:, 1], snippets[:, 0] + 1)


def test_reproducible_and_global_rng_untouched():
    state = torch.get_rng_state()
    a = sample_segments(300, 8, train=True, generator=gen(3))
    assert torch.equal(a, sample_segments(300, 8, train=True, generator=gen(3)))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("kwargs, name", [
    (dict(total_frames=0), "total_frames"), (dict(clip_len=0), "clip_len"), (dict(frame_interval=-1), "frame_interval"),
    (dict(num_clips=2.0), "num_clips"),
])
def test_bad_arguments(kwargs, name):
    args = dict(total_frames=10, clip_len=2, frame_interval=1, num_clips=2, train=False) | kwargs
    with pytest.raises(ValueError, match=name):
        sample_clips(**args)
