"""Dense optical flow for the temporal stream (Simonyan & Zisserman 2014), from core OpenCV.

compute_flow gives, for each pair of consecutive frames (I_t, I_{t+1}), the displacement field
d_t(x, y) = (dx, dy) with I_t(x, y) ~ I_{t+1}(x + dx, y + dy): content moving right has dx > 0,
content moving down (image y grows downwards) has dy > 0. T frames give T - 1 fields.
Methods: Farneback's polynomial expansion (cv2.calcOpticalFlowFarneback with OpenCV's sample
settings: pyramid scale 0.5, 3 levels, window 15, 3 iterations, poly_n 5, sigma 1.2) and DIS
(Kroeger et al. 2016; cv2.DISOpticalFlow, preset MEDIUM). TV-L1 would need opencv-contrib.

The flow-net input stacks L consecutive fields into 2L channels x1, y1, x2, y2, ... (the paper's
interleaving, L = 10 gives 20 channels): stack_flows.

Storage quantises each component to a byte over [-b, b] (denseflow and mmaction2's convention,
b = 20 px): q = round((clip(d, -b, b) + b) * 255 / (2b)), d' = q * 2b / 255 - b, so for |d| <= b
the round trip errs by at most half a quantum, b / 255, and always within one quantum 2b / 255.
extract_flows writes one such .npz per video, skipping videos already done (resumable).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["FLOW_METHODS", "compute_flow", "stack_flows", "quantize_flow", "dequantize_flow", "load_flow",
           "extract_flows", "FlowExtraction"]

FLOW_METHODS = ("farneback", "dis")
DEFAULT_BOUND = 20.0


def _gray(frames) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 (T, H, W, 3) or (T, H, W), got dtype {frames.dtype}")
    if frames.ndim == 4 and frames.shape[-1] == 3:
        # ITU-R 601 luma, as cv2.COLOR_RGB2GRAY
        import cv2

        return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames])
    if frames.ndim == 3:
        return frames
    raise ValueError(f"frames must have shape (T, H, W, 3) or (T, H, W), got {frames.shape}")


def compute_flow(frames, method: str = "farneback") -> np.ndarray:
    """Optical flow between consecutive frames: uint8 (T, H, W, 3) RGB or (T, H, W) grey -> float32 (T-1, H, W, 2)."""
    import cv2

    if method not in FLOW_METHODS:
        raise ValueError(f"method must be one of {', '.join(FLOW_METHODS)}, got {method!r}")
    gray = _gray(frames)
    if gray.shape[0] < 2:
        raise ValueError(f"compute_flow needs at least 2 frames, got {gray.shape[0]}")
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flows = [dis.calc(gray[t], gray[t + 1], None) for t in range(len(gray) - 1)]
    else:
        flows = [cv2.calcOpticalFlowFarneback(gray[t], gray[t + 1], None, pyr_scale=0.5, levels=3, winsize=15,
                                              iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
                 for t in range(len(gray) - 1)]
    return np.stack(flows).astype(np.float32)


def _interleave(flows):
    """(L, H, W, 2) -> (2L, H, W) ordered x1, y1, x2, y2, ... (numpy or torch)."""
    length, height, width, _ = flows.shape
    if isinstance(flows, torch.Tensor):
        return flows.permute(0, 3, 1, 2).reshape(2 * length, height, width)  # (L, 2, H, W) -> (2L, H, W)
    return np.moveaxis(flows, -1, 1).reshape(2 * length, height, width)


def stack_flows(flow, start: int, length: int):
    """Fields start..start+length-1 of flow (T-1, H, W, 2) as (2L, H, W): x1, y1, x2, y2, ... (numpy or torch)."""
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow must have shape (T-1, H, W, 2), got {tuple(flow.shape)}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    if not isinstance(start, int) or start < 0 or start + length > flow.shape[0]:
        raise ValueError(f"start={start!r}, length={length} must lie within the {flow.shape[0]} flow fields")
    return _interleave(flow[start:start + length])


def _check_bound(bound: float) -> float:
    if not bound > 0:
        raise ValueError(f"bound must be positive, got {bound!r}")
    return float(bound)


def quantize_flow(flow, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Float flow -> uint8: q = round((clip(d, -b, b) + b) * 255 / (2b))."""
    bound = _check_bound(bound)
    flow = np.asarray(flow.detach().cpu() if isinstance(flow, torch.Tensor) else flow, dtype=np.float32)
    return np.rint((np.clip(flow, -bound, bound) + bound) * (255.0 / (2.0 * bound))).astype(np.uint8)


def dequantize_flow(q, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """uint8 -> float32 flow: d' = q * 2b / 255 - b."""
    bound = _check_bound(bound)
    q = np.asarray(q)
    if q.dtype != np.uint8:
        raise TypeError(f"q must be uint8, got dtype {q.dtype}")
    return (q.astype(np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)).astype(np.float32)


def load_flow(path: str | os.PathLike) -> np.ndarray:
    """The dequantised flow (T-1, H, W, 2) float32 of an .npz written by extract_flows."""
    with np.load(path) as data:
        return dequantize_flow(data["flow"], float(data["bound"]))


def _save(path: Path, flow: np.ndarray, bound: float, method: str) -> None:
    from ..files import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez_compressed(f, flow=quantize_flow(flow, bound), bound=np.float32(bound), method=method)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write, fsync=False)


class FlowExtraction(NamedTuple):
    """What extract_flows did: the annotation list of the .npz files, and per-video counts."""

    list_path: Path  # out_dir/flow_list.txt: "rel.npz label" for every extracted video, mmaction2 video format
    computed: int  # videos whose flow was computed in this call
    skipped: int  # videos already done by an earlier call (their .npz exists)
    failed: list[Path]  # videos that could not be decoded (warned, not in the list)


def _relative_names(paths: list[Path], root) -> list[Path]:
    if root is not None:
        return [Path(os.path.relpath(p, root)) for p in paths]
    if all(not p.is_absolute() for p in paths):
        return paths
    common = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return [p.resolve().relative_to(common) for p in paths]


def extract_flows(samples_or_list_path, out_dir: str | os.PathLike, root: str | os.PathLike | None = None,
                  method: str = "farneback", progress: bool = True, bound: float = DEFAULT_BOUND,
                  backend: str = "auto") -> FlowExtraction:
    """Flow of every video of an annotation list (or a sequence of Samples) into out_dir, one .npz each.

    The .npz of video root/rel is out_dir/rel with suffix .npz and holds flow (T-1, H, W, 2) uint8,
    bound and method. Videos whose .npz exists are skipped (files are written atomically, so an
    existing file is complete): an interrupted run resumes where it stopped. Undecodable videos
    are warned about and listed in `failed`. A rich progress bar shows when progress=True.
    """
    from .annotations import Sample, read_annotations, write_annotations
    from .io import VideoDecodeError, decode_video

    if method not in FLOW_METHODS:
        raise ValueError(f"method must be one of {', '.join(FLOW_METHODS)}, got {method!r}")
    bound = _check_bound(bound)
    if isinstance(samples_or_list_path, (str, os.PathLike)):
        samples = read_annotations(samples_or_list_path, root=root)
    else:
        samples = list(samples_or_list_path)
        if not all(isinstance(s, Sample) for s in samples):
            raise TypeError("samples_or_list_path must be an annotation-list path or a sequence of Samples")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _relative_names([Path(s.path) for s in samples], root) if samples else []
    done, computed, skipped, failed = [], 0, 0, []
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("flow"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       TextColumn("{task.description}"))
        task = bar.add_task("", total=len(samples))
        bar.start()
    try:
        for sample, name in zip(samples, names):
            target = out_dir / name.with_suffix(".npz")
            if target.is_file():
                skipped += 1
            else:
                try:
                    frames = decode_video(sample.path, backend=backend)
                    if len(frames) < 2:
                        raise VideoDecodeError(f"{sample.path}: one frame only, no flow")
                except VideoDecodeError as err:
                    warnings.warn(f"extract_flows: skipping {sample.path}: {err}", RuntimeWarning, stacklevel=2)
                    failed.append(Path(sample.path))
                    target = None
                else:
                    _save(target, compute_flow(frames, method), bound, method)
                    computed += 1
            if target is not None:
                done.append(Sample(target, sample.label))
            if bar is not None:
                bar.update(task, advance=1, description=str(name))
    finally:
        if bar is not None:
            bar.stop()
    list_path = write_annotations(out_dir / "flow_list.txt", done, root=out_dir)
    return FlowExtraction(list_path, computed, skipped, failed)
