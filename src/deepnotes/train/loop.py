"""fit(): the one training loop every domain uses.

Per optimizer step: `accumulate` micro-batches of `batch_size` examples (per
process) go forward under the chosen precision and backward; then, in this
order, unscale (fp16), clip, step (skipped by the scaler on inf/NaN), scaler
update, EMA update. Mixed precision lives here and nowhere else:

    fp32  plain
    bf16  torch.autocast(bfloat16); no scaler needed (8 exponent bits)
    fp16  torch.autocast(float16) + DynamicLossScaler (5 exponent bits underflow)

Exact resume: the data order of epoch e is a DistributedSampler permutation
seeded by (seed, e) and every epoch has the same number of steps, so the step
counter alone says where in the data a run is. A checkpoint holds the weights,
optimizer, scaler, EMA, every rank's RNG states and the step; resuming replays
nothing and skips nothing, so the final weights equal an uninterrupted run's.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DistributedSampler, TensorDataset, default_collate

from .checkpoint import load_checkpoint, save_checkpoint
from .checks import check_compatible, check_same_optimizer, check_setup, warn_on_changes
from .distributed import DistState, all_mean, any_true, setup_distributed, teardown_distributed, wrap_model
from .ema import EMA
from .progress import progress_bar
from .rng import rng_state, set_rng_state

__all__ = ["FitConfig", "FitResult", "NonFiniteLossError", "fit", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "last.safetensors"
PRECISIONS = ("fp32", "bf16", "fp16")


class NonFiniteLossError(FloatingPointError):
    """The loss became inf/NaN in a precision that has no loss scaler to absorb it."""


@dataclass
class FitConfig:
    batch_size: int = 32  # per process: the global batch is batch_size * world_size * accumulate
    max_steps: int | None = None  # optimizer steps; at least one of max_steps / max_epochs
    max_epochs: int | None = None
    precision: str = "fp32"  # "fp32" | "bf16" (autocast) | "fp16" (autocast + DynamicLossScaler)
    grad_clip: float | None = None  # max global L2 norm of the gradients, after unscaling
    accumulate: int = 1  # micro-batches per optimizer step
    shuffle: bool = True
    eval_every: int | None = None  # optimizer steps between eval_fn calls (and once at the end)
    log_every: int = 10  # optimizer steps between JSONL lines
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int | None = None  # optimizer steps; a checkpoint is also written at the end
    resume: bool = True  # continue from checkpoint_dir/last.safetensors when it exists
    metrics_path: str | os.PathLike | None = None  # JSONL, written by rank 0
    seed: int = 0  # seeds the data order
    device: str = "cpu"
    progress: bool | None = None  # rich progress bar; None: only when stdout is a terminal
    max_skipped_steps: int = 50  # fp16: this many consecutive steps skipped by the scaler stop the run
    resume_lr: str = "checkpoint"  # on resume, whose lr wins: "checkpoint" (exact resume) | "current" (this call's)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("batch_size", "accumulate", "log_every", "max_skipped_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in ("max_steps", "max_epochs", "eval_every", "checkpoint_every"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError("set max_steps or max_epochs")
        if self.resume_lr not in ("checkpoint", "current"):
            raise ValueError(f"resume_lr must be 'checkpoint' or 'current', got {self.resume_lr!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")


_CONFIG_FIELDS = frozenset(f.name for f in fields(FitConfig))


@dataclass
class FitResult:
    step: int  # optimizer steps done in total (including before a resume)
    losses: list[float] = field(default_factory=list)  # mean loss of each step this call ran
    evals: list[dict] = field(default_factory=list)  # {"step": s, **eval_fn(model)}
    skipped_steps: int = 0  # steps the loss scaler skipped (inf/NaN gradients)
    scale: float | None = None  # final loss scale (fp16)
    resumed_from: int | None = None  # step of the checkpoint this call resumed from
    stopped: str = "done"  # "done" | "signal"


def _to_device(batch: Any, device: str) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _autocast(precision: str, device: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


class _StopFlag:
    """With a checkpoint folder, SIGTERM means: finish this step, checkpoint, then
    let the signal take its course (the previous handler, by default: exit).
    Without one there is nothing to save, so SIGTERM is left alone."""

    def __init__(self, active: bool):
        self.active = active and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def __enter__(self):
        if self.active:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self.active:
            signal.signal(signal.SIGTERM, self._previous)
            if self.requested:
                signal.raise_signal(signal.SIGTERM)  # the checkpoint is on disk: now stop as asked


def _truncate_log(path: Path, step: int) -> None:
    """Drops log lines past the checkpoint's step (a resumed run rewrites them), and a
    line torn by a kill mid-write."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    path.write_text("".join(line + "\n" for line in kept))


class _Unset:
    """Default of fit()'s keyword arguments: take the value from `config`, else FitConfig's default."""

    def __repr__(self) -> str:
        return "<from config>"


UNSET: Any = _Unset()


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_data,
    loss_fn: Callable[[nn.Module, Any], Any],
    *,
    config: FitConfig | None = None,
    eval_fn: Callable[[nn.Module], dict] | None = None,
    ema: EMA | None = None,
    schedule: Callable[[int], float] | None = None,
    scaler=None,
    collate_fn: Callable = default_collate,
    generator: torch.Generator | None = None,
    batch_size: int = UNSET,
    max_steps: int | None = UNSET,
    max_epochs: int | None = UNSET,
    precision: str = UNSET,
    grad_clip: float | None = UNSET,
    accumulate: int = UNSET,
    shuffle: bool = UNSET,
    eval_every: int | None = UNSET,
    log_every: int = UNSET,
    checkpoint_dir: str | os.PathLike | None = UNSET,
    checkpoint_every: int | None = UNSET,
    resume: bool = UNSET,
    metrics_path: str | os.PathLike | None = UNSET,
    seed: int = UNSET,
    device: str = UNSET,
    progress: bool | None = UNSET,
    max_skipped_steps: int = UNSET,
    resume_lr: str = UNSET,
) -> FitResult:
    """Trains model on train_data (a map-style Dataset) and returns a FitResult.

    Args:
        loss_fn: ``loss_fn(model, batch)`` returns the mean loss of the batch, or
            ``(loss, metrics_dict)``.
        config: a FitConfig. The keyword arguments from ``batch_size`` on are its
            fields (documented there); each one given replaces the config's value
            (``fit(..., config=cfg, max_steps=100)``), the others come from
            ``config``, or FitConfig's defaults without one.
        eval_fn: ``eval_fn(model) -> dict`` under no_grad and eval mode, rank 0 only.
        ema: an EMA updated after every optimizer step that was not skipped.
        schedule: lr multiplier as a function of the step (0-based), applied to
            each group's initial lr before the step (see deepnotes.optim.schedules).
        generator: the torch.Generator that loss_fn draws its randomness from (noise levels,
            masks), when it does not use the global one; its state is saved in checkpoints and
            restored on resume like the global RNGs, so a resumed run draws what an
            uninterrupted one would. Under torchrun, seed it per rank.
        scaler: the loss scaler for fp16 (default: a fresh DynamicLossScaler); any
            object with GradScaler's methods, torch.amp.GradScaler included.
    """
    given = {name: value for name, value in locals().items()
             if name in _CONFIG_FIELDS and value is not UNSET}
    cfg = FitConfig(**{**(asdict(config) if config else {}), **given})
    if not hasattr(train_data, "__len__") or not hasattr(train_data, "__getitem__"):
        raise TypeError(f"train_data must be a map-style Dataset (len and indexing), got {type(train_data).__name__}")

    dist_state = setup_distributed(cfg.device)
    try:
        return _fit(model, optimizer, train_data, loss_fn, cfg, eval_fn, ema, schedule, scaler, collate_fn,
                    generator, dist_state)
    finally:
        teardown_distributed(dist_state)


def _scaler_enabled(scaler) -> bool:
    is_enabled = getattr(scaler, "is_enabled", None)
    return scaler is not None and (is_enabled() if callable(is_enabled) else True)


def _fit(model, optimizer, data, loss_fn, cfg: FitConfig, eval_fn, ema, schedule, scaler, collate_fn,
         generator, ds: DistState) -> FitResult:
    check_setup(cfg, scaler)
    if cfg.precision == "fp16" and scaler is None:
        from ..amp import DynamicLossScaler

        scaler = DynamicLossScaler()
    inner = model
    model = wrap_model(model, ds, cfg.device)
    sampler = DistributedSampler(data, num_replicas=ds.world_size, rank=ds.rank, shuffle=cfg.shuffle,
                                 seed=cfg.seed, drop_last=True)
    per_step = cfg.batch_size * cfg.accumulate
    steps_per_epoch = len(sampler) // per_step
    if steps_per_epoch == 0:
        raise ValueError(f"train_data has {len(data)} examples: too few for one step of batch_size "
                         f"{cfg.batch_size} x accumulate {cfg.accumulate} x {ds.world_size} processes")
    total = min(s for s in (cfg.max_steps, cfg.max_epochs and cfg.max_epochs * steps_per_epoch) if s)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])

    result = FitResult(step=0)
    ckpt_path = Path(cfg.checkpoint_dir) / CHECKPOINT_NAME if cfg.checkpoint_dir else None
    metrics_path = Path(cfg.metrics_path) if cfg.metrics_path and ds.is_main else None
    if ckpt_path and cfg.resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        check_compatible(state, cfg, ds, ckpt_path)
        check_same_optimizer(state, optimizer, ckpt_path)
        current_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        warn_on_changes(state, len(data), current_lrs, cfg, ckpt_path)
        inner.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if cfg.resume_lr == "current":
            for group, lr in zip(optimizer.param_groups, current_lrs):
                group["initial_lr"] = group["lr"] = lr  # a schedule rescales lr from initial_lr each step
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"][ds.rank], generator)
        result.step = result.resumed_from = int(state["step"])
        if metrics_path:
            _truncate_log(metrics_path, result.step)
    elif metrics_path and metrics_path.exists():
        metrics_path.unlink()

    def checkpoint() -> None:
        if ckpt_path is None:
            return
        rngs = [rng_state(generator)]
        if ds.enabled:
            rngs = [None] * ds.world_size
            torch.distributed.all_gather_object(rngs, rng_state(generator))
        if ds.is_main:
            save_checkpoint(ckpt_path, {
                "step": result.step, "model": inner.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "ema": ema.state_dict() if ema is not None else None, "rng": rngs,
                "run": {"batch_size": cfg.batch_size, "accumulate": cfg.accumulate,
                        "world_size": ds.world_size, "seed": cfg.seed, "precision": cfg.precision,
                        "optimizer": type(optimizer).__name__, "dataset_len": len(data),
                        "param_groups": [len(g["params"]) for g in optimizer.param_groups],
                        "initial_lr": [float(g["initial_lr"]) for g in optimizer.param_groups]},
            })
        ds.barrier()

    def log(record: dict) -> None:
        if metrics_path:
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def evaluate() -> None:
        if eval_fn is None or not ds.is_main:
            return
        inner.eval()
        with torch.no_grad():
            out = {"step": result.step, **{k: float(v) for k, v in eval_fn(inner).items()}}
        inner.train()
        result.evals.append(out)
        log({"step": result.step, "eval": {k: v for k, v in out.items() if k != "step"}})

    show = cfg.progress if cfg.progress is not None else sys.stdout.isatty()
    bar = progress_bar(show and ds.is_main, total, result.step)
    params = [p for p in inner.parameters() if p.requires_grad]
    model.train()
    t0 = time.perf_counter()
    consecutive_skips = 0
    with _StopFlag(active=ckpt_path is not None) as stop, bar:
        while result.step < total:
            epoch, first = divmod(result.step, steps_per_epoch)
            sampler.set_epoch(epoch)
            indices = list(sampler)
            for j in range(first, steps_per_epoch):
                micro = [indices[(j * cfg.accumulate + a) * cfg.batch_size:][: cfg.batch_size]
                         for a in range(cfg.accumulate)]
                loss, grad_norm, skipped = _step(model, optimizer, data, micro, loss_fn, cfg, scaler, schedule,
                                                 params, collate_fn, result.step, ds)
                if ema is not None and not skipped:
                    ema.update(inner)
                result.step += 1
                result.skipped_steps += int(skipped)
                consecutive_skips = consecutive_skips + 1 if skipped else 0
                if consecutive_skips >= cfg.max_skipped_steps:
                    raise NonFiniteLossError(
                        f"the loss scaler skipped {consecutive_skips} steps in a row (steps "
                        f"{result.step - consecutive_skips + 1}-{result.step}): gradients are inf/NaN at every "
                        f"scale down to {float(scaler.get_scale()):.3g}; the loss or the model diverged "
                        f"(max_skipped_steps={cfg.max_skipped_steps})")
                result.losses.append(loss)
                if result.step % cfg.log_every == 0 or result.step == total:
                    rec = {"step": result.step, "epoch": epoch, "loss": all_mean(loss, ds),
                           "lr": optimizer.param_groups[0]["lr"], "skipped": result.skipped_steps,
                           "seconds": round(time.perf_counter() - t0, 3)}
                    if grad_norm is not None:
                        rec["grad_norm"] = grad_norm
                    if scaler is not None:
                        rec["scale"] = float(scaler.get_scale())
                    log(rec)
                if cfg.eval_every and (result.step % cfg.eval_every == 0 or result.step == total):
                    evaluate()
                bar.advance(loss, result.skipped_steps)
                stopping = any_true(stop.requested, ds)
                if (cfg.checkpoint_every and result.step % cfg.checkpoint_every == 0) or stopping:
                    checkpoint()
                if stopping:
                    result.stopped = "signal"
                    break
                if result.step >= total:
                    break
            if result.stopped == "signal":
                break
    if result.stopped == "done":
        if cfg.eval_every is None and eval_fn is not None:
            evaluate()
        checkpoint()
    result.scale = float(scaler.get_scale()) if scaler is not None else None
    return result


def _gather(data, idx: list[int], collate_fn):
    """collate_fn([data[i] for i in idx]); a TensorDataset with the default collate is indexed once per
    tensor instead (the same batch, as default_collate stacks its items into a list)."""
    if collate_fn is default_collate and type(data) is TensorDataset:
        index = torch.as_tensor(idx)
        return [t[index] for t in data.tensors]
    return collate_fn([data[i] for i in idx])


def _step(model, optimizer, data, micro, loss_fn, cfg, scaler, schedule, params, collate_fn, step, ds):
    """One optimizer step over the micro-batches; returns (mean loss, grad norm, skipped)."""
    if schedule is not None:
        factor = float(schedule(step))
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for a, idx in enumerate(micro):
        batch = _to_device(_gather(data, idx, collate_fn), cfg.device)
        sync = contextlib.nullcontext() if (not ds.enabled or a == len(micro) - 1) else model.no_sync()
        with sync:
            with _autocast(cfg.precision, cfg.device):
                out = loss_fn(model, batch)
            loss = out[0] if isinstance(out, (tuple, list)) else out
            if not (isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.requires_grad):
                got = (f"a tensor of shape {tuple(loss.shape)} (requires_grad={loss.requires_grad})"
                       if isinstance(loss, torch.Tensor) else f"{type(loss).__name__} {loss!r}"[:120])
                raise TypeError(f"loss_fn must return the batch's mean loss as a 0-dim tensor that requires "
                                f"grad (or (loss, metrics)), got {got}")
            value = float(loss.detach())
            if not _scaler_enabled(scaler) and not math.isfinite(value):
                raise NonFiniteLossError(f"loss is {value} at step {step + 1} (precision {cfg.precision}, no "
                                         "enabled loss scaler): stopping; lower the learning rate or check the data")
            loss = loss.float() / len(micro)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        total += value
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = None
    if cfg.grad_clip is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    skipped = False
    if scaler is not None:
        scale_before = float(scaler.get_scale())
        scaler.step(optimizer)
        skipped = getattr(scaler, "last_step_skipped", None)
        scaler.update()
        if skipped is None:  # torch's GradScaler: it backs the scale off exactly when it skipped the step
            skipped = _scaler_enabled(scaler) and float(scaler.get_scale()) < scale_before
        skipped = bool(skipped)
    else:
        optimizer.step()
    return total / len(micro), grad_norm, skipped
