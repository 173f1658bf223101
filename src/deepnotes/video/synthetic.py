"""OrderShapes: a synthetic video task that only a model sensitive to frame order can solve.

One shape of random kind, colour, size and start state moves over a noisy background. A clip is
rendered from per-frame poses (centre c_t, angle theta_t, radius r_t), with t' = t - (T-1)/2:

    left/right      c_t = m + s v t' e_x       v ~ U(0.65, 1) (S - 2r - 2)/(T - 1)   (~2-3 px/frame at 32 px)
    up/down         c_t = m + s v t' e_y
    clockwise/anti  theta_t = theta_0 + s w t'   w ~ U(0.6, 1) min(25 deg, 170 deg/(T-1))
    grow/shrink     log r_t = log sqrt(r_a r_b) + s t' log(r_b/r_a)/(T-1),  r_b/r_a ~ 3

with s = +1 or -1 the two classes of a pair. Every pose path is symmetric about its middle and
its parameters are drawn independently of s, so reversing a clip of class 2i in time gives a
clip distributed exactly as class 2i+1: the classes are told apart by order alone, and a model
that averages over frames (TSN) is at chance within each pair. Image y grows downwards, so a
growing angle turns clockwise on screen. The shapes (triangle, L, T, half-disc) have no
rotational symmetry, so every rotation is visible. Pixels are drawn from a signed distance d
(in pixels) as alpha = clip(1/2 - d, 0, 1), then blended over the background; noise is a static
texture (sigma 0.04 per channel) plus grey per-frame noise (sigma 0.02), and clips are stored as uint8.

Variants
    order   8 classes in 4 reversal pairs (ORDER_CLASSES); class 2i+1 is class 2i reversed.
    scene   8 classes shape x background tint ("triangle-warm", ...); motion is one of the 8 order
            motions drawn independently of the class: only static appearance tells the class.
    mixed   two-stream task: 4 appearance classes (red, green, blue, yellow shapes; motion a random
            translation) and 4 motion classes (left, right, up, down; colour from a disjoint
            palette), so one RGB frame cannot know the direction and the flow barely sees colour.
The test split holds n/2 clips each followed by its exact time reversal (indices 2j, 2j+1), the
second labelled reverse_label(first): the pair partner for a motion class, the same class for
an appearance class. `pairs` lists those index pairs.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

__all__ = ["OrderShapes", "ORDER_CLASSES", "SHAPES", "VARIANTS"]

ORDER_CLASSES = ("left", "right", "up", "down", "clockwise", "anticlockwise", "grow", "shrink")
SHAPES = ("triangle", "L", "T", "halfdisc")
VARIANTS = ("order", "scene", "mixed")
_TINTS = ("warm", "cool")
_MIXED_CLASSES = ("red", "green", "blue", "yellow", "left", "right", "up", "down")
_APPEARANCE_RGB = ((1.0, 0.15, 0.15), (0.15, 0.9, 0.15), (0.2, 0.35, 1.0), (1.0, 1.0, 0.15))
_MOTION_RGB = ((0.9, 0.9, 0.9), (0.15, 0.95, 0.95), (0.95, 0.15, 0.95), (1.0, 0.6, 0.15))
_SIGN = (-1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0, -1.0)  # per order motion: direction along its axis
_CHUNK = 256  # clips rendered at once: bounds the float working memory


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(n,) each in [0, 1] -> (n, 3): f(k) = v - v s max(0, min(k, 4 - k, 1)), k = (j + 6h) mod 6, j = 5, 3, 1."""
    j = torch.tensor([5.0, 3.0, 1.0])
    k = torch.remainder(j[None, :] + 6.0 * h[:, None], 6.0)
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(torch.minimum(k, 4.0 - k),
                                                                            torch.ones_like(k)), min=0.0)


def _box(u, v, cu, cv, hu, hv):
    return torch.maximum((u - cu).abs() - hu, (v - cv).abs() - hv)


def _sdf(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance (unit radius; negative inside) of each shape, all within the unit disc."""
    if shape == 0:  # isosceles triangle pointing along +u: vertices (1, 0), (-0.6, +-0.7)
        norm = math.hypot(0.7, 1.6)
        return torch.maximum(-u - 0.6, torch.maximum((0.7 * (u - 1) + 1.6 * v) / norm, (0.7 * (u - 1) - 1.6 * v) / norm))
    if shape == 1:  # L: a vertical bar and a foot
        return torch.minimum(_box(u, v, -0.45, 0.0, 0.25, 0.75), _box(u, v, 0.0, 0.5, 0.7, 0.25))
    if shape == 2:  # T: a top bar and a stem
        return torch.minimum(_box(u, v, 0.0, -0.5, 0.75, 0.22), _box(u, v, 0.0, 0.15, 0.22, 0.6))
    w = u + 0.35  # half-disc of radius 0.9 centred at (-0.35, 0), flat side facing -u
    return torch.maximum(torch.sqrt(w * w + v * v) - 0.9, -w)


def _poses(motion: torch.Tensor, frames: int, size: int, g: torch.Generator):
    """Centres cx, cy, angles theta and radii r, each (n, T), of clips with order-motion ids `motion` (n,)."""
    n = motion.numel()
    tp = torch.arange(frames, dtype=torch.float32) - (frames - 1) / 2.0  # t' (T,)
    sign = torch.tensor(_SIGN)[motion][:, None]
    kind = (motion // 2)[:, None]  # 0: x, 1: y, 2: rotation, 3: scale
    span = max(frames - 1, 1)
    # translation: radius, speed, path middle along the axis, position across it
    r_tr = _uniform(n, 0.11, 0.16, g) * size
    v = _uniform(n, 0.65, 1.0, g) * (size - 2 * r_tr - 2) / span
    half = v * span / 2
    lo = r_tr + 1 + half
    mid = lo + torch.rand(n, generator=g) * (size - 1 - r_tr - half - lo).clamp(min=0)
    across = r_tr + 1 + torch.rand(n, generator=g) * (size - 2 * r_tr - 3).clamp(min=0)
    along = mid[:, None] + sign * v[:, None] * tp
    # rotation about a fixed centre
    r_rot = _uniform(n, 0.2, 0.28, g) * size
    w = _uniform(n, 0.6, 1.0, g) * math.radians(min(25.0, 170.0 / span))
    # scale from r_a to r_b about a fixed centre
    r_a, r_b = _uniform(n, 0.08, 0.11, g) * size, _uniform(n, 0.25, 0.32, g) * size
    log_r = 0.5 * (r_a.log() + r_b.log())[:, None] + sign * tp * ((r_b / r_a).log() / span)[:, None]
    r_max = torch.where(kind[:, 0] == 2, r_rot, r_b)
    free = (size - 2 * r_max - 3).clamp(min=0)
    cx0 = r_max + 1 + torch.rand(n, generator=g) * free
    cy0 = r_max + 1 + torch.rand(n, generator=g) * free
    theta0 = torch.rand(n, generator=g) * 2 * math.pi

    ones = torch.ones(1, frames)
    cx = torch.where(kind == 0, along, torch.where(kind == 1, across[:, None] * ones, cx0[:, None] * ones))
    cy = torch.where(kind == 1, along, torch.where(kind == 0, across[:, None] * ones, cy0[:, None] * ones))
    theta = theta0[:, None] + torch.where(kind == 2, sign * w[:, None] * tp, torch.zeros(1, frames))
    r = torch.where(kind == 3, log_r.exp(), torch.where(kind == 2, r_rot[:, None], r_tr[:, None]) * ones)
    return cx, cy, theta, r


def _render(shape, colour, background, cx, cy, theta, r, size: int, g: torch.Generator) -> torch.Tensor:
    """uint8 clips (n, 3, T, S, S): shapes (n,), colours (n, 3), background base colours (n, 3), poses (n, T)."""
    n, frames = cx.shape
    grid = torch.arange(size, dtype=torch.float32)  # pixel centres
    alpha = torch.empty(n, 1, frames, size, size)
    for k in range(len(SHAPES)):
        idx = (shape == k).nonzero(as_tuple=True)[0]
        if not idx.numel():
            continue
        dx = grid[None, None, None, :] - cx[idx][..., None, None]  # (m, T, 1, S)
        dy = grid[None, None, :, None] - cy[idx][..., None, None]  # (m, T, S, 1)
        rr = r[idx][..., None, None]
        cos, sin = theta[idx].cos()[..., None, None] / rr, theta[idx].sin()[..., None, None] / rr
        u = cos * dx + sin * dy  # shape coordinates: rotate by -theta, scale by 1/r  (m, T, S, S)
        v = cos * dy - sin * dx
        alpha[idx, 0] = (0.5 - _sdf(k, u, v) * rr).clamp_(0.0, 1.0)
    # in 0..255 from here: grey noise per pixel and frame, a static texture per channel, the base colour
    video = torch.randn(n, 1, frames, size, size, generator=g).mul_(0.02 * 255)
    video = video + (torch.randn(n, 3, 1, size, size, generator=g).mul_(0.04 * 255)
                     + 255 * background[:, :, None, None, None])
    video = torch.lerp(video, 255 * colour[:, :, None, None, None].expand_as(video), alpha)  # (n, 3, T, S, S)
    return video.clamp_(0.0, 255.0).round_().to(torch.uint8)


class OrderShapes(Dataset):
    """n synthetic clips; item i is (clip float32 (3, T, size, size) in [0, 1], label).

    Attributes: clips uint8 (n, 3, T, S, S), labels LongTensor (n,), classes, variant, split,
    motions (n,) order-motion id of each clip (0..7 as ORDER_CLASSES), shapes (n,) index into
    SHAPES, pairs LongTensor (n/2, 2) of (clip, its reversal) in the test split (None in train).
    Randomness: a torch.Generator seeded from (seed, split); train and test never share draws.
    """

    def __init__(self, n: int, frames: int = 8, size: int = 32, seed: int = 0, variant: str = "order",
                 split: str = "train"):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
            raise ValueError(f"frames must be an int >= 2, got {frames!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 16:
            raise ValueError(f"size must be an int >= 16, got {size!r}")
        if (size - 2 * 0.16 * size - 2) / (frames - 1) < 0.5:
            raise ValueError(f"size={size} is too small for {frames} frames: translations would move < 0.5 px/frame")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if split == "test" and n % 2:
            raise ValueError(f"the test split pairs every clip with its reversal: n must be even, got {n}")
        self.frames, self.size, self.seed, self.variant, self.split = frames, size, seed, variant, split
        self.classes = {"order": ORDER_CLASSES, "mixed": _MIXED_CLASSES,
                        "scene": tuple(f"{s}-{t}" for s in SHAPES for t in _TINTS)}[variant]
        g = torch.Generator().manual_seed(int(seed) * 2 + (split == "test"))
        base = n // 2 if split == "test" else n
        labels = (torch.arange(base) % len(self.classes))[torch.randperm(base, generator=g)]
        clips, motions, shapes = self._draw(labels, g)
        if split == "test":
            clips = torch.stack([clips, clips.flip(2)], dim=1).flatten(0, 1)  # (base, 2, ...) -> (n, ...)
            labels = torch.stack([labels, self._reverse(labels)], dim=1).flatten()
            motions = torch.stack([motions, motions ^ 1], dim=1).flatten()
            shapes = shapes.repeat_interleave(2)
            self.pairs = torch.arange(n).reshape(-1, 2)
        else:
            self.pairs = None
        self.clips, self.labels, self.motions, self.shapes = clips, labels, motions, shapes

    def _draw(self, labels: torch.Tensor, g: torch.Generator):
        n = labels.numel()
        shapes = torch.randint(len(SHAPES), (n,), generator=g)
        hue, sat, val = torch.rand(n, generator=g), _uniform(n, 0.5, 1.0, g), _uniform(n, 0.75, 1.0, g)
        colour = _hsv_to_rgb(hue, sat, val)
        background = _uniform(3 * n, 0.0, 0.3, g).reshape(n, 3)
        if self.variant == "order":
            motions = labels.clone()
        elif self.variant == "scene":
            motions = torch.randint(8, (n,), generator=g)
            shapes = labels // 2
            warm = torch.stack([_uniform(n, 0.25, 0.4, g), _uniform(n, 0.03, 0.12, g), _uniform(n, 0.03, 0.12, g)], 1)
            background = torch.where((labels % 2 == 0)[:, None], warm, warm.flip(1))  # warm: reddish, cool: bluish
        else:
            appearance = labels < 4
            motions = torch.where(appearance, torch.randint(4, (n,), generator=g), labels - 4)
            palette = torch.where(appearance[:, None], torch.tensor(_APPEARANCE_RGB)[labels % 4],
                                  torch.tensor(_MOTION_RGB)[torch.randint(4, (n,), generator=g)])
            colour = (palette + _uniform(3 * n, -0.06, 0.06, g).reshape(n, 3)).clamp(0.0, 1.0)
        cx, cy, theta, r = _poses(motions, self.frames, self.size, g)
        clips = torch.empty(n, 3, self.frames, self.size, self.size, dtype=torch.uint8)
        for s in range(0, n, _CHUNK):
            e = min(n, s + _CHUNK)
            clips[s:e] = _render(shapes[s:e], colour[s:e], background[s:e], cx[s:e], cy[s:e], theta[s:e],
                                 r[s:e], self.size, g)
        return clips, motions, shapes

    def _reverse(self, labels: torch.Tensor) -> torch.Tensor:
        if self.variant == "order":
            return labels ^ 1
        if self.variant == "scene":
            return labels.clone()
        return torch.where(labels < 4, labels, 4 + ((labels - 4) ^ 1))

    def reverse_label(self, label: int) -> int:
        """The label of a clip of class `label` played backwards."""
        self._check_label(label)
        return int(self._reverse(torch.tensor([label]))[0])

    def group(self, label: int) -> str:
        """"appearance" or "motion": what defines class `label` (order: motion; scene: appearance)."""
        self._check_label(label)
        if self.variant == "mixed":
            return "appearance" if label < 4 else "motion"
        return "motion" if self.variant == "order" else "appearance"

    def _check_label(self, label) -> None:
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(self.classes):
            raise ValueError(f"label must be an int in [0, {len(self.classes)}), got {label!r}")

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, index: int):
        return self.clips[index].float() / 255.0, int(self.labels[index])

    def write_videos(self, folder: str | os.PathLike, fps: int = 8) -> Path:
        """Writes every clip as folder/<variant>/<split>/<class>/clip_<i>.mp4 and the mmaction2 list
        folder/<variant>_<split>.txt ("relpath label", paths relative to folder); returns the list's Path."""
        from .io import write_video

        folder = Path(folder)
        lines = []
        for i in range(len(self)):
            label = int(self.labels[i])
            rel = Path(self.variant, self.split, self.classes[label], f"clip_{i:05d}.mp4")
            write_video(folder / rel, self.clips[i].permute(1, 2, 3, 0).numpy(), fps=fps)  # (3,T,H,W)->(T,H,W,3)
            lines.append(f"{rel.as_posix()} {label}\n")
        path = folder / f"{self.variant}_{self.split}.txt"
        path.write_text("".join(lines), encoding="utf-8")
        return path
