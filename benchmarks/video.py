"""Video: data-pipeline throughput (PyAV vs OpenCV) and 2D-temporal vs 3D model cost on this CPU.

One run, float32 on the CPU:

1. Decoding: OrderShapes writes the same set of .mp4 files (``write_videos``: PyAV, mpeg4 or
   libx264); every file is decoded to uint8 RGB by ``decode_video(backend="pyav")`` and by
   ``decode_video(backend="opencv")``, the two timed in turns over the whole set (median of
   repeats), reported as clips/s and as the ratio PyAV / OpenCV. The decoded frames of the two
   backends are compared (max absolute difference) so a fast wrong decoder would show.
2. The data pipeline: ``VideoDataset`` in training mode (TSN segment sampling, multi-scale crop,
   flip, to_tensor) over the same list, each backend, clips/s.
3. Models at equal depth and width (ResNet-18, base width 64 at full size; smaller with --quick):
   TSM (2D + temporal shift), R3D (3×3×3 convolutions) and R(2+1)D, on clips of T frames:
   parameters and multiply-adds per view (video.profiling, head excluded); inference latency of
   one clip (batch 1, no_grad) and the latency of one training step (batch B: forward, cross-
   entropy, backward, AdamW step; batch 2 at full size, 4 with --quick), the three models timed
   in turns (median of 3); ratios R3D / TSM and R(2+1)D / TSM.

--quick: 32 clips, width 16, 64 px, fewer repeats. Threads: 1 by default (--threads), so the
numbers do not depend on how busy the other core is.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from deepnotes.bench import write_result
from deepnotes.measure import cpu_info, interleaved_times
from deepnotes.video.dataset import VideoDataset
from deepnotes.video.io import decode_video
from deepnotes.video.annotations import read_annotations
from deepnotes.video.profiling import profile
from deepnotes.video.synthetic import OrderShapes
from deepnotes.video.train import VideoTraining, build_video_model

MODELS = ("tsm", "r3d", "r2plus1d")


def decoding(folder: Path, n_clips: int, frames: int, size: int, repeats: int) -> dict:
    """Writes n_clips OrderShapes videos and times both decoders over the whole set."""
    data = OrderShapes(n_clips, frames=frames, size=size, seed=0, variant="order", split="train")
    t0 = time.perf_counter()
    listing = data.write_videos(folder)
    write_s = time.perf_counter() - t0
    samples = read_annotations(listing, root=Path(listing).parent)
    paths = [s.path for s in samples]
    a = [decode_video(p, backend="pyav") for p in paths]
    b = [decode_video(p, backend="opencv") for p in paths]
    same_shape = all(x.shape == y.shape for x, y in zip(a, b))
    max_diff = max(int(np.abs(x.astype(np.int16) - y.astype(np.int16)).max()) for x, y in zip(a, b)) if same_shape \
        else None
    times = interleaved_times({backend: (lambda backend=backend: [decode_video(p, backend=backend) for p in paths])
                               for backend in ("pyav", "opencv")}, repeats=repeats, warmup=0)
    pipeline = {}
    for backend in ("pyav", "opencv"):
        ds = VideoDataset(samples, n_segments=frames, train=True, size=size, backend=backend, seed=0)
        t0 = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        pipeline[backend] = len(ds) / (time.perf_counter() - t0)
    return {"clips": n_clips, "frames": frames, "size": size, "write_seconds": round(write_s, 3),
            "frame_shapes_equal": same_shape, "max_abs_pixel_difference": max_diff,
            "decode_clips_per_s": {k: n_clips / v for k, v in times.items()},
            "decode_ratio_pyav_over_opencv": times["opencv"] / times["pyav"],
            "pipeline_clips_per_s": pipeline,
            "pipeline_ratio_pyav_over_opencv": pipeline["pyav"] / pipeline["opencv"]}


def models(depth: int, width: int, frames: int, size: int, batch: int, repeats: int) -> dict:
    """Params, MACs per view, batch-1 inference latency and training-step latency of the three models."""
    built, rows = {}, {}
    for name in MODELS:
        training = VideoTraining(model=name, depth=depth, width=width, n_segments=frames)
        built[name] = build_video_model(training, 10, seed=0)
        p = profile(built[name], (1, 3, frames, size, size), include_head=False, runs=1, batch_sizes=(1,))
        rows[name] = {"params": int(p["params"]), "macs_per_view": float(p["flops"])}
    g = torch.Generator().manual_seed(0)
    one = torch.rand(1, 3, frames, size, size, generator=g)
    xb = torch.rand(batch, 3, frames, size, size, generator=g)
    yb = torch.randint(0, 10, (batch,), generator=g)
    optims = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in built.items()}

    def infer(name):
        model = built[name]

        def call():
            model.eval()
            with torch.no_grad():
                model(one)
        return call

    def step(name):
        model, opt = built[name], optims[name]

        def call():
            model.train()
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
        return call

    inference = interleaved_times({n: infer(n) for n in MODELS}, repeats=repeats, warmup=1)
    training = interleaved_times({n: step(n) for n in MODELS}, repeats=repeats, warmup=1)
    for name in MODELS:
        rows[name]["inference_ms"] = 1e3 * inference[name]
        rows[name]["train_step_ms"] = 1e3 * training[name]
    ratios = {}
    for name in ("r3d", "r2plus1d"):
        for key in ("macs_per_view", "params", "inference_ms", "train_step_ms"):
            ratios[f"{name}_over_tsm_{key}"] = rows[name][key] / rows["tsm"][key]
    return {"depth": depth, "width": width, "frames": frames, "size": size, "train_batch": batch,
            "flops_unit": "multiply-adds per view (one clip), classifier head excluded", "models": rows,
            "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quick = args.quick
    console = Console(width=140)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        dec = decoding(Path(tmp), n_clips=32 if quick else 128, frames=16 if not quick else 8,
                       size=64 if quick else 112, repeats=3 if quick else 5)
    mod = models(depth=18, width=16 if quick else 64, frames=8, size=64 if quick else 112, batch=2 if not quick else 4,
                 repeats=3)

    t = Table(title=f"decoding {dec['clips']} OrderShapes .mp4 clips ({dec['frames']} frames, {dec['size']} px)")
    for col in ("backend", "decode clips/s", "pipeline clips/s"):
        t.add_column(col)
    for backend in ("pyav", "opencv"):
        t.add_row(backend, f"{dec['decode_clips_per_s'][backend]:.1f}", f"{dec['pipeline_clips_per_s'][backend]:.1f}")
    t.caption = (f"PyAV / OpenCV: decode {dec['decode_ratio_pyav_over_opencv']:.2f}x, pipeline "
                 f"{dec['pipeline_ratio_pyav_over_opencv']:.2f}x; max pixel difference {dec['max_abs_pixel_difference']}")
    console.print(t)
    t = Table(title=f"ResNet-{mod['depth']} width {mod['width']}, {mod['frames']} frames of {mod['size']} px, "
                    f"{torch.get_num_threads()} thread(s)")
    for col in ("model", "params", "MMACs/view", "inference ms (1 clip)", f"train step ms (batch {mod['train_batch']})"):
        t.add_column(col)
    for name in MODELS:
        r = mod["models"][name]
        t.add_row(name, f"{r['params'] / 1e6:.2f}M", f"{r['macs_per_view'] / 1e6:.1f}", f"{r['inference_ms']:.1f}",
                  f"{r['train_step_ms']:.1f}")
    ratios = mod["ratios"]
    t.caption = (f"R3D / TSM: MACs {ratios['r3d_over_tsm_macs_per_view']:.2f}x, inference "
                 f"{ratios['r3d_over_tsm_inference_ms']:.2f}x, train step {ratios['r3d_over_tsm_train_step_ms']:.2f}x; "
                 f"R(2+1)D / TSM: MACs {ratios['r2plus1d_over_tsm_macs_per_view']:.2f}x, inference "
                 f"{ratios['r2plus1d_over_tsm_inference_ms']:.2f}x, train step "
                 f"{ratios['r2plus1d_over_tsm_train_step_ms']:.2f}x")
    console.print(t)
    path = write_result("video", {"quick": quick, "cpu": cpu_info(), "decoding": dec, "models": mod,
                                  "seconds": round(time.perf_counter() - t_start, 1)},
                        Path(args.out) if args.out else None)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
