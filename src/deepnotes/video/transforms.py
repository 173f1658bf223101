"""Spatial transforms of a clip, mmaction2's training and testing pipelines without its registry.

Frames are float tensors (T, C, H, W): C = 3 for RGB (values 0..255, as decoded) or C = 2L for
stacked flow (pixels). frames_from_numpy turns a decoded uint8 (T, H, W, C) array into that
layout; to_tensor normalises and moves time behind channels, (T, C, H, W) -> (C, T, H, W), the
layout the models take. Every crop is taken at the same place in all T frames.

    training  resize_short(scale) -> multi_scale_crop(size) -> random_flip -> to_tensor
    testing   resize_short(scale) -> center_crop(size) | three_crop(size) -> to_tensor

multi_scale_crop is TSN's MultiScaleCrop: with b = min(H, W) the crop side is b * s for s in
scales (snapped to size when within 3 px), width and height drawn independently from scale
indices at most one apart (max_wh_scale_gap=1), placed at one of 5 fixed positions (4 corners,
centre), then resized to size x size.
Flipping a flow stack left-right also negates its x components (channels 0, 2, 4, ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "frames_from_numpy", "resize_short", "multi_scale_crop",
           "random_flip", "center_crop", "three_crop", "to_tensor"]

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # mmaction2's img_norm_cfg, on 0..255 pixels
IMAGENET_STD = (58.395, 57.12, 57.375)


def _check(frames) -> tuple[int, int, int, int]:
    if not isinstance(frames, torch.Tensor) or not frames.is_floating_point():
        raise TypeError(f"frames must be a float tensor (T, C, H, W), got {type(frames).__name__}"
                        f"{'' if not isinstance(frames, torch.Tensor) else ' of dtype ' + str(frames.dtype)}")
    if frames.dim() != 4:
        raise ValueError(f"frames must have shape (T, C, H, W), got {tuple(frames.shape)}")
    return tuple(frames.shape)


def _size(size, name: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{name} must be a positive int, got {size!r}")
    return size


def frames_from_numpy(array) -> torch.Tensor:
    """uint8 or float array (T, H, W, C) -> float32 tensor (T, C, H, W), values unchanged."""
    tensor = torch.as_tensor(array)
    if tensor.dim() != 4:
        raise ValueError(f"array must have shape (T, H, W, C), got {tuple(tensor.shape)}")
    return tensor.permute(0, 3, 1, 2).float().contiguous()


def _resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if frames.shape[-2:] == (height, width):
        return frames
    return F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def resize_short(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resizes (T, C, H, W) so the shorter side is `size`, keeping the aspect ratio (bilinear, antialiased)."""
    _, _, height, width = _check(frames)
    size = _size(size)
    if height <= width:
        return _resize(frames, size, max(1, round(width * size / height)))
    return _resize(frames, max(1, round(height * size / width)), size)


def _crop(frames: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    return frames[..., top:top + height, left:left + width]


def center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size window of (T, C, H, W) (H, W >= size)."""
    _, _, height, width = _check(frames)
    size = _size(size)
    if height < size or width < size:
        raise ValueError(f"center_crop: frames {height}x{width} are smaller than size {size}; resize first")
    return _crop(frames, (height - size) // 2, (width - size) // 2, size, size)


def three_crop(frames: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Three size x size crops along the longer side (start, middle, end), as mmaction2's ThreeCrop."""
    _, _, height, width = _check(frames)
    size = _size(size)
    if height < size or width < size:
        raise ValueError(f"three_crop: frames {height}x{width} are smaller than size {size}; resize first")
    if width >= height:
        top = (height - size) // 2
        return [_crop(frames, top, left, size, size) for left in (0, (width - size) // 2, width - size)]
    left = (width - size) // 2
    return [_crop(frames, top, left, size, size) for top in (0, (height - size) // 2, height - size)]


def multi_scale_crop(frames: torch.Tensor, size: int, scales=(1, 0.875, 0.75, 0.66),
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """TSN's multi-scale corner crop of (T, C, H, W), resized to (T, C, size, size)."""
    _, _, height, width = _check(frames)
    size = _size(size)
    scales = tuple(float(s) for s in scales)
    if not scales or any(not 0 < s <= 1 for s in scales):
        raise ValueError(f"scales must be a non-empty sequence of numbers in (0, 1], got {scales}")
    base = min(height, width)
    sides = [size if abs(int(base * s) - size) < 3 else max(1, int(base * s)) for s in scales]
    pairs = [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= 1]
    crop_w, crop_h = pairs[int(torch.randint(len(pairs), (1,), generator=generator))]
    crop_w, crop_h = min(crop_w, width), min(crop_h, height)
    dw, dh = (width - crop_w) // 4, (height - crop_h) // 4
    positions = [(0, 0), (0, 4 * dw), (4 * dh, 0), (4 * dh, 4 * dw), (2 * dh, 2 * dw)]  # (top, left)
    top, left = positions[int(torch.randint(len(positions), (1,), generator=generator))]
    return _resize(_crop(frames, top, left, crop_h, crop_w), size, size)


def random_flip(frames: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5,
                flow: bool = False) -> torch.Tensor:
    """Flips (T, C, H, W) left-right with probability p; flow=True also negates the x channels (0, 2, ...)."""
    _, channels, _, _ = _check(frames)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if flow and channels % 2:
        raise ValueError(f"flow frames need an even channel count (x1, y1, x2, y2, ...), got {channels}")
    if float(torch.rand((), generator=generator)) >= p:
        return frames
    flipped = frames.flip(-1)
    if flow:
        sign = torch.ones(channels, dtype=frames.dtype)
        sign[0::2] = -1.0
        flipped = flipped * sign[:, None, None]
    return flipped


def to_tensor(frames: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(frames - mean) / std per channel, (T, C, H, W) -> (C, T, H, W); mean/std: sequences of C numbers."""
    _, channels, _, _ = _check(frames)
    mean = torch.as_tensor(mean, dtype=frames.dtype).reshape(-1)
    std = torch.as_tensor(std, dtype=frames.dtype).reshape(-1)
    if mean.numel() not in (1, channels) or std.numel() not in (1, channels):
        raise ValueError(f"mean and std must have 1 or {channels} values, got {mean.numel()} and {std.numel()}")
    if bool((std <= 0).any()):
        raise ValueError(f"std must be positive, got {std.tolist()}")
    normed = (frames - mean[:, None, None]) / std[:, None, None]
    return normed.permute(1, 0, 2, 3).contiguous()  # (T, C, H, W) -> (C, T, H, W)
