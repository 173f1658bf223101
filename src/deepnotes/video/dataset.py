"""VideoDataset: an annotation list as a map-style torch Dataset of sampled, cropped clips.

Per item: decode (or load the frames, or the flow) -> sample_views -> spatial transforms ->
to_tensor. Training returns (clip (C, T, H, W), label) with T = n_segments * clip_len; testing
returns (clips (V, C, T, H, W), label) with V = num_clips * crops views in clip-major order
(clip0crop0, clip0crop1, ..., clip1crop0, ...), so scores reshaped to (N, V, K) average per
video with metrics.average_views.

    modality "rgb"   C = 3, ImageNet-normalised 0..255 pixels (mmaction2's img_norm_cfg)
    modality "flow"  C = 2 * flow_length: each of the n_segments snippets stacks flow_length
                     consecutive flow fields x1, y1, x2, y2, ... (two-stream input), divided by
                     flow_bound (so [-1, 1], as mmaction2's (q - 128) / 128 on quantised flow).
                     A sample's .npz (from extract_flows) is read; any other file is decoded and
                     its flow computed on the fly (slow: extract offline for real data).

Samples with total_frames set are frame folders (mmaction2 rawframes: dir/img_00001.jpg, ...).

Unreadable videos: __getitem__ warns (once per path), counts the file in `skipped` (a Counter
path -> times skipped) and returns the next readable item (index + 1, + 2, ... cyclically), so
an epoch never stops on a corrupt file; the batch holds a duplicate in its place. With
DataLoader workers each worker counts in its own copy: read `skipped` with num_workers=0, or
find bad files up front with `check()`.

Randomness (training offsets, crops, flips) comes from `generator` (default: seeded from
`seed`); inside a DataLoader worker, from a generator seeded by the worker's seed, so workers
differ and a seeded DataLoader repeats.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from .annotations import Sample, read_annotations
from .flow import FLOW_METHODS, _interleave, compute_flow, load_flow
from .io import BACKENDS, VideoDecodeError, decode_video
from .sampling import sample_views
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, center_crop, frames_from_numpy, multi_scale_crop, random_flip,
                         resize_short, three_crop, to_tensor)

__all__ = ["VideoDataset"]

MODALITIES = ("rgb", "flow")


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class VideoDataset(Dataset):
    """Clips of the videos in `samples` (a list of Samples, or an annotation-list path read with `kind`).

    root is prepended to relative sample paths. scale_size (default round(size * 8 / 7), i.e.
    256 for 224) is the short side before cropping; three-crop testing resizes to `size` itself
    and slides three size x size windows along the long side (mmaction2's ThreeCrop).
    """

    def __init__(self, samples, root: str | os.PathLike | None = None, n_segments: int = 8, clip_len: int = 1,
                 frame_interval: int = 1, num_clips: int = 1, crops: int = 1, train: bool = True, size: int = 112,
                 backend: str = "auto", modality: str = "rgb", flow_length: int = 5, *, kind: str = "video",
                 scale_size: int | None = None, flow_method: str = "farneback", flow_bound: float = 20.0,
                 filename_tmpl: str = "img_{:05d}.jpg", start_index: int = 1, seed: int = 0,
                 generator: torch.Generator | None = None):
        if isinstance(samples, (str, os.PathLike)):
            samples = read_annotations(samples, kind=kind)
        samples = list(samples)
        if not samples or not all(isinstance(s, Sample) for s in samples):
            raise ValueError("samples must be a non-empty sequence of Samples or an annotation-list path")
        if root is not None:
            samples = [Sample(Path(root) / s.path, s.label, s.total_frames) for s in samples]
        for value, name in ((n_segments, "n_segments"), (clip_len, "clip_len"), (frame_interval, "frame_interval"),
                            (num_clips, "num_clips"), (size, "size"), (flow_length, "flow_length")):
            _positive(value, name)
        if crops not in (1, 3):
            raise ValueError(f"crops must be 1 (centre) or 3 (three-crop), got {crops!r}")
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
        if modality == "flow" and (clip_len != 1 or frame_interval != 1):
            raise ValueError(f"modality='flow' stacks flow_length fields per segment: clip_len and frame_interval "
                             f"must be 1, got {clip_len} and {frame_interval}")
        if modality == "flow" and any(s.total_frames is not None for s in samples):
            raise ValueError("modality='flow' reads .npz files from extract_flows or video files, not frame folders")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if flow_method not in FLOW_METHODS:
            raise ValueError(f"flow_method must be one of {', '.join(FLOW_METHODS)}, got {flow_method!r}")
        if not flow_bound > 0:
            raise ValueError(f"flow_bound must be positive, got {flow_bound!r}")
        self.samples = samples
        self.n_segments, self.clip_len, self.frame_interval = n_segments, clip_len, frame_interval
        self.num_clips, self.crops, self.train, self.size = num_clips, crops, bool(train), size
        self.scale_size = _positive(scale_size, "scale_size") if scale_size is not None else round(size * 8 / 7)
        self.backend, self.modality, self.flow_length = backend, modality, flow_length
        self.flow_method, self.flow_bound = flow_method, float(flow_bound)
        self.filename_tmpl, self.start_index = filename_tmpl, start_index
        self.generator = generator if generator is not None else torch.Generator().manual_seed(int(seed))
        self.skipped: Counter = Counter()
        self._bad: set[Path] = set()
        self._worker: tuple[int, torch.Generator] | None = None

    # --- bookkeeping ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    @property
    def views(self) -> int:
        """Views per item: 1 in training, num_clips * crops in testing."""
        return 1 if self.train else self.num_clips * self.crops

    @property
    def channels(self) -> int:
        return 3 if self.modality == "rgb" else 2 * self.flow_length

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())

    def _rng(self) -> torch.Generator:
        info = get_worker_info()
        if info is None:
            return self.generator
        if self._worker is None or self._worker[0] != info.seed:
            self._worker = (info.seed, torch.Generator().manual_seed(info.seed))
        return self._worker[1]

    # --- loading -------------------------------------------------------------------------------
    def _read_frames(self, sample: Sample, inds: np.ndarray) -> np.ndarray:
        folder = Path(sample.path)
        import cv2

        out = []
        for i in inds:
            name = folder / self.filename_tmpl.format(int(i) + self.start_index)
            bgr = cv2.imread(str(name), cv2.IMREAD_COLOR)
            if bgr is None:
                raise VideoDecodeError(f"{name}: missing or unreadable frame")
            out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if len({f.shape for f in out}) != 1:
            raise VideoDecodeError(f"{folder}: frames of different sizes")
        return np.stack(out)

    def _flows(self, sample: Sample) -> np.ndarray:
        path = Path(sample.path)
        if path.suffix == ".npz":
            try:
                return load_flow(path)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                raise VideoDecodeError(f"{path}: unreadable flow file ({err})") from err
        frames = decode_video(path, self.backend)
        if len(frames) < 2:
            raise VideoDecodeError(f"{path}: one frame only, no flow")
        return compute_flow(frames, self.flow_method)

    def _load(self, sample: Sample, rng: torch.Generator) -> torch.Tensor:
        """Frames (V * T, C, H, W) float of every temporal view of one sample."""
        if self.modality == "flow":
            flows = self._flows(sample)  # (F, H, W, 2)
            inds = sample_views(len(flows), self.n_segments, self.flow_length, 1, self.num_clips, self.train, rng)
            snippets = inds.reshape(-1, self.flow_length).numpy()  # (V * n_segments, L)
            stacks = np.stack([_interleave(flows[s]) for s in snippets])  # (V * n_segments, 2L, H, W)
            return torch.from_numpy(stacks)
        if sample.total_frames is not None:
            inds = sample_views(sample.total_frames, self.n_segments, self.clip_len, self.frame_interval,
                                self.num_clips, self.train, rng)
            return frames_from_numpy(self._read_frames(sample, inds.flatten().numpy()))
        video = decode_video(sample.path, self.backend)  # (F, H, W, 3)
        inds = sample_views(len(video), self.n_segments, self.clip_len, self.frame_interval, self.num_clips,
                            self.train, rng)
        return frames_from_numpy(video[inds.flatten().numpy()])

    def _norm(self) -> tuple:
        if self.modality == "rgb":
            return IMAGENET_MEAN, IMAGENET_STD
        return (0.0,), (self.flow_bound,)

    def _transform(self, frames: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        mean, std = self._norm()
        flow = self.modality == "flow"
        if self.train:
            frames = multi_scale_crop(resize_short(frames, self.scale_size), self.size, generator=rng)
            return to_tensor(random_flip(frames, rng, flow=flow), mean, std)  # (C, T, H, W)
        if self.crops == 1:
            crops = [center_crop(resize_short(frames, self.scale_size), self.size)]
        else:
            crops = three_crop(resize_short(frames, self.size), self.size)
        views = torch.stack(crops)  # (K, V_t * T, C, s, s)
        K, _, C, s, _ = views.shape
        views = views.reshape(K, self.num_clips, -1, C, s, s).transpose(0, 1)  # (V_t, K, T, C, s, s): clip-major
        views = views.reshape(self.num_clips * K, -1, C, s, s)
        return torch.stack([to_tensor(v, mean, std) for v in views])  # (V, C, T, s, s)

    def __getitem__(self, index: int):
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        rng = self._rng()
        for step in range(n):
            sample = self.samples[(index + step) % n]
            if Path(sample.path) in self._bad:
                self.skipped[str(sample.path)] += 1
                continue
            try:
                frames = self._load(sample, rng)
            except VideoDecodeError as err:
                self._bad.add(Path(sample.path))
                self.skipped[str(sample.path)] += 1
                warnings.warn(f"VideoDataset: skipping an unreadable video: {err}", RuntimeWarning,
                              stacklevel=2)
                continue
            return self._transform(frames, rng), sample.label
        raise RuntimeError(f"VideoDataset: none of the {n} videos can be read (first: {self.samples[0].path})")

    def check(self) -> list[Path]:
        """Decodes every sample once; returns (and remembers, without counting) the unreadable ones."""
        bad = []
        for sample in self.samples:
            try:
                self._load(sample, torch.Generator().manual_seed(0))
            except VideoDecodeError:
                bad.append(Path(sample.path))
                self._bad.add(Path(sample.path))
        return bad
