"""What fit() checks: its set-up before the first step, and a checkpoint against the run resuming it.

Everything a user can get wrong is found before any training work, with an error naming the argument;
resuming is refused where the checkpoint cannot fit (another optimizer, another batch layout) and never
silent where it fits but differs (another dataset or learning rate).
"""
from __future__ import annotations

import warnings
from pathlib import Path

from ..files import ensure_writable_dir
from .checkpoint import CheckpointError
from .distributed import DistState

__all__ = ["check_setup", "check_compatible", "check_same_optimizer", "warn_on_changes"]


def check_setup(cfg, scaler) -> None:
    """The scaler fits the precision and is GradScaler-like; the output paths can be written."""
    if scaler is not None and cfg.precision != "fp16":
        raise ValueError(f"scaler is only used with precision='fp16', got precision={cfg.precision!r} and a "
                         f"{type(scaler).__name__}; drop the scaler or train in fp16")
    if scaler is not None:
        missing = [m for m in ("scale", "unscale_", "step", "update", "get_scale", "state_dict",
                               "load_state_dict") if not callable(getattr(scaler, m, None))]
        if missing:
            raise TypeError(f"scaler must have GradScaler's methods; {type(scaler).__name__} lacks {missing}")
    if cfg.checkpoint_dir is not None:
        ensure_writable_dir(Path(cfg.checkpoint_dir), "checkpoint_dir")
    if cfg.metrics_path is not None:
        metrics = Path(cfg.metrics_path)
        if metrics.is_dir():
            raise ValueError(f"metrics_path {str(metrics)!r} is a folder; expected a file path")
        ensure_writable_dir(metrics.parent, "metrics_path's folder")


def check_same_optimizer(state: dict, optimizer, path: Path) -> None:
    """A checkpoint's optimizer state only fits the same optimizer class and parameter-group layout."""
    run = state.get("run", {})
    saved_class = run.get("optimizer")
    if saved_class is not None and saved_class != type(optimizer).__name__:
        raise CheckpointError(f"cannot resume from {path}: it holds a {saved_class} state, this run's optimizer "
                              f"is {type(optimizer).__name__}")
    saved_groups = run.get("param_groups")
    groups = [len(g["params"]) for g in optimizer.param_groups]
    if saved_groups is not None and saved_groups != groups:
        raise CheckpointError(f"cannot resume from {path}: its optimizer has parameter groups of sizes "
                              f"{saved_groups}, this run's has {groups}")


def warn_on_changes(state: dict, n_data: int, lrs: list, cfg, path: Path) -> None:
    """Resuming with another dataset or lr is allowed, but never silent."""
    run = state.get("run", {})
    if run.get("dataset_len") is not None and run["dataset_len"] != n_data:
        warnings.warn(f"resuming from {path}: train_data has {n_data} examples, the checkpoint's run had "
                      f"{run['dataset_len']}; the data order differs from an uninterrupted run", stacklevel=4)
    saved = run.get("initial_lr")
    if saved is not None and [float(x) for x in saved] != [float(x) for x in lrs]:
        wins = "the checkpoint's" if cfg.resume_lr == "checkpoint" else "this call's"
        warnings.warn(f"resuming from {path}: the optimizer's lr is {[float(x) for x in lrs]}, the checkpoint's "
                      f"is {saved}; {wins} is used (resume_lr={cfg.resume_lr!r})", stacklevel=4)


def check_compatible(state: dict, cfg, ds: DistState, path: Path) -> None:
    run = state.get("run", {})
    want = {"batch_size": cfg.batch_size, "accumulate": cfg.accumulate, "world_size": ds.world_size,
            "seed": cfg.seed}
    diff = {k: (run.get(k), v) for k, v in want.items() if run.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a} vs now {b}" for k, (a, b) in diff.items())
        raise ValueError(f"cannot resume exactly from {path}: {detail}")
    if len(state["rng"]) != ds.world_size:
        raise ValueError(f"{path} holds RNG states for {len(state['rng'])} processes, this run has {ds.world_size}")
