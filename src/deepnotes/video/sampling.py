"""Which frames a clip reads: TSN segment sampling and dense clip sampling, as mmaction2's
SampleFrames (v1.2) does it, with torch generators instead of numpy's global state.

A clip is clip_len frames spaced frame_interval apart, spanning ori = clip_len * frame_interval
frames from its offset o: indices o + j * frame_interval, j = 0..clip_len-1, wrapped modulo the
video length (mmaction2's out_of_bound_opt="loop").

Training offsets (num_clips clips in a video of F frames):
    a = (F - ori + 1) // num_clips
    a > 0:                     o_i = i a + U{0..a-1}           (TSN: random offset in each segment)
    F > max(num_clips, ori):   sorted draws U{0..F-ori}        (segments shorter than a frame)
    a == 0:                    o_i = round(i (F - ori + 1) / num_clips)
    else:                      o_i = 0
Test offsets:
    clip_len == 1 (2D):  o_i = floor((i + 1/2) F / num_clips)   (segment centres)
    clip_len  > 1 (3D):  m = max(F - ori, 0); o_i = round(i m / (num_clips - 1)), or m // 2 for one clip
                         (clips spaced evenly from the first frame to the last, as PySlowFast)

TSN's 8 segments of one frame are SampleFrames(clip_len=1, num_clips=8): sample_segments.
"""
from __future__ import annotations

import torch

__all__ = ["sample_segments", "sample_clips", "sample_views"]


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _clip_offsets(total: int, ori: int, num_clips: int, clip_len: int, train: bool,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Float offsets (num_clips,) of mmaction2's SampleFrames (truncated to int by the caller)."""
    if train:
        avg = (total - ori + 1) // num_clips
        if avg > 0:
            return (torch.arange(num_clips) * avg + torch.randint(avg, (num_clips,), generator=generator)).double()
        if total > max(num_clips, ori):
            return torch.randint(total - ori + 1, (num_clips,), generator=generator).sort().values.double()
        if avg == 0:
            ratio = (total - ori + 1.0) / num_clips
            return torch.round(torch.arange(num_clips, dtype=torch.float64) * ratio)
        return torch.zeros(num_clips, dtype=torch.float64)
    if clip_len == 1:
        avg = total / num_clips
        return torch.arange(num_clips, dtype=torch.float64) * avg + avg / 2.0
    max_offset = max(total - ori, 0)
    if num_clips > 1:
        return torch.round(torch.arange(num_clips, dtype=torch.float64) * (max_offset / (num_clips - 1)))
    return torch.tensor([float(max_offset // 2)], dtype=torch.float64)


def sample_clips(total_frames: int, clip_len: int, frame_interval: int, num_clips: int, train: bool,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Frame indices (num_clips, clip_len), LongTensor, in [0, total_frames): mmaction2's SampleFrames."""
    total = _positive(total_frames, "total_frames")
    _positive(clip_len, "clip_len"), _positive(frame_interval, "frame_interval"), _positive(num_clips, "num_clips")
    ori = clip_len * frame_interval
    offsets = _clip_offsets(total, ori, num_clips, clip_len, train, generator)
    inds = offsets[:, None] + (torch.arange(clip_len) * frame_interval).double()[None, :]  # (num_clips, clip_len)
    return torch.remainder(inds, total).long()  # loop out-of-range frames; then truncate as astype(int32)


def sample_segments(total_frames: int, n_segments: int, train: bool,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """TSN snippet indices (n_segments,): one random frame per segment in training, the centres in testing."""
    return sample_clips(total_frames, 1, 1, n_segments, train, generator)[:, 0]


def sample_views(total_frames: int, n_segments: int = 1, clip_len: int = 1, frame_interval: int = 1,
                 num_clips: int = 1, train: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Frame indices (V, n_segments * clip_len) of every temporal view VideoDataset reads.

    Training: V = 1, SampleFrames(clip_len, frame_interval, num_clips=n_segments) flattened, so
    n_segments=1 is one dense 3D clip and clip_len=1 is TSN sampling.
    Testing: V = num_clips.
      n_segments == 1: SampleFrames' test clips (centres for clip_len=1, evenly spaced for 3D).
      n_segments  > 1: the video is cut into n_segments segments of s = (F - ori + 1) / n_segments
        frames; view c takes, in segment i, the snippet at floor(i s + (c + 1/2) s / num_clips):
        num_clips=1 is mmaction2's segment centres, larger num_clips spreads the views evenly
        inside every segment (TSN/TSM multi-clip testing).
    """
    total = _positive(total_frames, "total_frames")
    for value, name in ((n_segments, "n_segments"), (clip_len, "clip_len"), (frame_interval, "frame_interval"),
                        (num_clips, "num_clips")):
        _positive(value, name)
    if train:
        return sample_clips(total, clip_len, frame_interval, n_segments, True, generator).reshape(1, -1)
    if n_segments == 1:
        return sample_clips(total, clip_len, frame_interval, num_clips, False)  # (num_clips, clip_len)
    ori = clip_len * frame_interval
    span = max(total - ori + 1, 1) / n_segments
    i = torch.arange(n_segments, dtype=torch.float64)
    c = torch.arange(num_clips, dtype=torch.float64)
    offsets = i[None, :] * span + (c[:, None] + 0.5) * span / num_clips  # (num_clips, n_segments)
    inds = offsets[..., None] + (torch.arange(clip_len) * frame_interval).double()  # (V, n_segments, clip_len)
    return torch.remainder(inds, total).long().reshape(num_clips, n_segments * clip_len)
