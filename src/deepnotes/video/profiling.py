"""Cost of a video model: parameters, multiply-adds per view, and measured latency.

FLOPs convention (mmaction2 get_flops, references section 7): one multiply-add counts once. torch's
``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-add of convolutions and matrix
products (and nothing for BN, ReLU, pooling, additions, the temporal shift or interpolation), so

    flops = FlopCounterMode total / 2      [multiply-adds for ONE view]

where a view is one input clip (1, C, T, H, W): for a 2D model that is T frames through the backbone
(TSM-R50 8f: 8 x 4.1G = 32.9G), not one frame, and not multiplied by the number of test views
(clips x crops). include_head=False (default, as mmaction2) counts forward_features only, and the
parameter count then leaves the classifier out too; params_total always includes it.

Latency: median wall-clock milliseconds of ``runs`` forward passes (after ``warmup``) in eval mode under
torch.inference_mode, per batch size (1 and N by default), on the device of the model's parameters.
"""
from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["profile", "count_multiply_adds", "FLOPS_UNIT"]

FLOPS_UNIT = "multiply-adds per view"


def _view_shape(input_shape: Sequence[int]) -> tuple[tuple[int, ...], int | None]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) not in (4, 5) or any(d < 1 for d in shape):
        raise ValueError(f"input_shape must be one view (C, T, H, W) or a batch (N, C, T, H, W) of positive "
                         f"sizes, got {tuple(input_shape)}")
    return (shape[1:], shape[0]) if len(shape) == 5 else (shape, None)


def _forward_fn(model: nn.Module, include_head: bool):
    if include_head:
        return model
    if not hasattr(model, "forward_features"):
        raise TypeError(f"{type(model).__name__} has no forward_features; pass include_head=True")
    return model.forward_features


def count_multiply_adds(fn, *args) -> tuple[int, dict[str, int]]:
    """Runs fn(*args) under FlopCounterMode; returns (multiply-adds, {op name: multiply-adds})."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    by_op = {str(op): int(n) // 2 for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()) // 2, by_op


def profile(model: nn.Module, input_shape: Sequence[int], include_head: bool = False, runs: int = 10,
            warmup: int = 2, batch_sizes: Sequence[int] | None = None,
            generator: torch.Generator | None = None) -> dict:
    """Parameters, multiply-adds per view and latency of ``model`` on clips of ``input_shape``.

    input_shape: (C, T, H, W), or (N, C, T, H, W) whose N is the second latency batch size.
    batch_sizes: default (1, N), N = 8 when input_shape has no batch dim. runs=0 skips timing.
    Returns dict(params, params_total, flops, flops_unit, flops_by_op, head_included, input_shape,
    latency_ms={batch: median ms per batch}, latency_ms_per_clip={batch: ms / batch}, runs).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    view, n = _view_shape(input_shape)
    if batch_sizes is None:
        batch_sizes = (1, n if n is not None else 8)
    batch_sizes = tuple(dict.fromkeys(int(b) for b in batch_sizes))
    if any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive ints, got {batch_sizes}")
    if runs < 0 or warmup < 0:
        raise ValueError(f"runs and warmup must be >= 0, got runs={runs}, warmup={warmup}")
    fn = _forward_fn(model, include_head)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")

    params_total = sum(p.numel() for p in model.parameters())
    head = getattr(model, "head", None)
    head_params = sum(p.numel() for p in head.parameters()) if isinstance(head, nn.Module) else 0

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            x1 = torch.randn((1, *view), generator=generator).to(device)
            flops, by_op = count_multiply_adds(fn, x1)
            latency = {}
            for b in batch_sizes if runs > 0 else ():
                x = torch.randn((b, *view), generator=generator).to(device)
                times = []
                for i in range(warmup + runs):
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                    fn(x)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if i >= warmup:
                        times.append(1e3 * (time.perf_counter() - t0))
                latency[b] = statistics.median(times)
    finally:
        model.train(was_training)
    return dict(params=params_total if include_head else params_total - head_params, params_total=params_total,
                flops=flops, flops_unit=FLOPS_UNIT, flops_by_op=by_op, head_included=bool(include_head),
                input_shape=(1, *view), latency_ms=latency,
                latency_ms_per_clip={b: ms / b for b, ms in latency.items()}, runs=runs)
