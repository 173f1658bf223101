"""Reading and writing video files as uint8 RGB arrays (T, H, W, 3).

decode_video decodes every frame of a file with PyAV (FFmpeg's libav* through Python) or with
OpenCV's VideoCapture; backend="auto" tries PyAV first and falls back to OpenCV, as mmaction2's
PyAVInit / OpenCVInit pair does. A file that cannot be opened, holds garbage, is truncated so
that no frame decodes, or fails in the middle of decoding raises VideoDecodeError (a
RuntimeError), never a backend-specific exception: VideoDataset catches exactly that type to
skip the file.

write_video encodes with libx264 in yuv444p (no chroma subsampling, crf 10: close to lossless,
about one grey level of error on the synthetic clips) when FFmpeg has it, else with mpeg4 in
yuv420p at a high bit rate. Either way the result is an ordinary .mp4 that both backends read.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ["BACKENDS", "VideoDecodeError", "decode_video", "write_video", "video_info"]

BACKENDS = ("auto", "pyav", "opencv")


class VideoDecodeError(RuntimeError):
    """A video file that cannot be decoded: missing, unreadable, corrupt or truncated."""


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def _decode_pyav(path: Path) -> np.ndarray:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as err:
        raise VideoDecodeError(f"{path}: PyAV cannot decode it ({type(err).__name__}: {err})") from err
    if not frames:
        raise VideoDecodeError(f"{path}: PyAV decoded no frames (empty or truncated file)")
    return np.stack(frames)


def _decode_opencv(path: Path) -> np.ndarray:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoDecodeError(f"{path}: OpenCV cannot open it")
        frames = []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    except cv2.error as err:
        raise VideoDecodeError(f"{path}: OpenCV cannot decode it ({err})") from err
    finally:
        cap.release()
    if not frames:
        raise VideoDecodeError(f"{path}: OpenCV decoded no frames (empty or truncated file)")
    return np.stack(frames)


def decode_video(path: str | os.PathLike, backend: str = "pyav") -> np.ndarray:
    """All frames of a video file as uint8 RGB (T, H, W, 3).

    backend: "pyav", "opencv", or "auto" (PyAV, then OpenCV if PyAV fails). Raises
    VideoDecodeError when the file is missing, unreadable, corrupt or yields no frame.
    """
    _check_backend(backend)
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"{path}: no such file")
    if backend == "pyav":
        return _decode_pyav(path)
    if backend == "opencv":
        return _decode_opencv(path)
    try:
        return _decode_pyav(path)
    except VideoDecodeError as first:
        try:
            return _decode_opencv(path)
        except VideoDecodeError as second:
            raise VideoDecodeError(f"{first}; {second}") from second


def video_info(path: str | os.PathLike) -> dict:
    """Container metadata without decoding: frames (as declared, 0 if unknown), fps, width, height."""
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.base_rate
            return {"frames": int(stream.frames), "fps": float(rate) if rate else 0.0,
                    "width": int(stream.codec_context.width), "height": int(stream.codec_context.height)}
    except (av.error.FFmpegError, OSError, IndexError) as err:
        raise VideoDecodeError(f"{path}: PyAV cannot open it ({type(err).__name__}: {err})") from err


def _encoder() -> tuple[str, str, dict]:
    """(codec, pixel format, options): libx264 4:4:4 near-lossless when present, else mpeg4 4:2:0."""
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264", "yuv444p", {"crf": "10", "preset": "veryfast"}
    except (av.error.FFmpegError, ValueError):  # PyAV raises UnknownCodecError (a ValueError)
        return "mpeg4", "yuv420p", {}


def write_video(path: str | os.PathLike, frames, fps: float = 8) -> Path:
    """Encodes uint8 RGB frames (T, H, W, 3) (numpy or torch) as an .mp4 file; returns its Path.

    The parent folder is created. mpeg4 (the fallback codec) needs even H and W.
    """
    import av

    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise TypeError(f"frames must be uint8, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must have shape (T, H, W, 3) with T >= 1, got {tuple(frames.shape)}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    rate = Fraction(fps).limit_denominator(1001)  # 29.97 -> 30000/1001
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"path must end in .mp4, got {str(path)!r}")
    codec, pix_fmt, options = _encoder()
    _, height, width, _ = frames.shape
    if pix_fmt == "yuv420p" and (height % 2 or width % 2):
        raise ValueError(f"{codec} in {pix_fmt} needs even height and width, got {height}x{width}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = options
        if codec == "mpeg4":
            stream.bit_rate = 8_000_000  # far above what small clips need: quality, not size
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    return path
