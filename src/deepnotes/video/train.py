r"""Training and multi-view testing of video classifiers, on deepnotes.train.fit.

Training minimises the cross-entropy of the clip's logits,

    L = −(1/B) Σ_b log softmax(f(x_b))_{y_b},         x_b (C, T, H, W), f(x) (K,)

with AdamW (or SGD with momentum, mmaction2's default) under a linear warm-up and a cosine or
constant schedule, gradient clipping (TSM clips at 20) and float32 on the CPU; fit() brings the
checkpoints with exact resume, torchrun DDP and the JSONL log.

Testing follows mmaction2's multi-view protocol. A test item holds V = clips × crops views,
clip-major (clip0crop0, clip0crop1, …). All N·V views go through the network; the scores are
reshaped to (N, V, K) and averaged (``average_views``):

    'prob'   s_n = (1/V) Σ_v softmax(z_{n,v})          (mmaction2's average_clips='prob')
    'score'  s_n = (1/V) Σ_v z_{n,v}                    (average_clips='score')

then top-1 / top-5 accuracy, mean-class accuracy (the mean of the per-class recalls) and the
confusion matrix. With V = 1 the two modes give the single-view prediction.

``trained_video_model`` keys a trained model in the ArtifactStore by its recipe (architecture,
training settings, seed, data fingerprint), so the notes' models are trained once and reused.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset, default_collate

from ..artifacts import ArtifactStore, Recipe, fingerprint
from ..train import fit

__all__ = ["VideoTraining", "build_video_model", "train_video_model", "evaluate_video", "trained_video_model",
           "save_video_model", "load_video_model", "collate_skipping_none", "as_tensor_dataset",
           "MODEL_FILE", "META_FILE"]

MODEL_FILE, META_FILE = "model.safetensors", "model.json"
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class VideoTraining:
    """A video model and how it is trained: the recipe of one trained network."""

    model: str = "tsm"  # a name of deepnotes.video.models.MODELS
    depth: int = 18  # ResNet depth: 10, 18, 34, 50
    width: int = 64  # base channels of the ResNet's first stage (64 in the papers; 8-16 trains on a CPU)
    n_segments: int = 8  # frames per clip the model sees (TSN segments; the clip length of a 3D model)
    in_channels: int = 3  # 3 for RGB, 2L for L stacked optical flows
    dropout: float = 0.0  # before the classifier (TSN: 0.5 on RGB, 0.7 on flow)
    steps: int | None = 200  # optimizer steps (None: use epochs)
    epochs: int | None = None  # passes over the training set; the run stops at whichever comes first
    batch_size: int = 16
    optimizer: str = "adamw"  # "adamw" | "sgd" (momentum, mmaction2's default)
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    warmup: int = 0  # linear warm-up steps
    schedule: str = "cosine"  # after warm-up: "cosine" (to 0) | "constant"
    grad_clip: float | None = 20.0  # max global gradient norm (TSM's clip_grad 20)
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        for name in ("depth", "width", "n_segments", "in_channels", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VideoTraining.{name} must be a positive int, got {value!r}")
        for name in ("steps", "epochs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"VideoTraining.{name} must be a positive int or None, got {value!r}")
        if self.steps is None and self.epochs is None:
            raise ValueError("VideoTraining: set steps or epochs")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"VideoTraining.warmup must be an int >= 0, got {self.warmup!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"VideoTraining.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"VideoTraining.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.lr > 0:
            raise ValueError(f"VideoTraining.lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0 or not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"VideoTraining: weight_decay must be >= 0, dropout and label_smoothing in [0, 1), got "
                             f"{self.weight_decay!r}, {self.dropout!r}, {self.label_smoothing!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"VideoTraining.grad_clip must be positive or None, got {self.grad_clip!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VideoTraining":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def build_video_model(training: VideoTraining, num_classes: int, seed: int = 0) -> nn.Module:
    """``build_model`` for the recipe's architecture, its initial weights drawn from a generator
    seeded with ``seed`` (the global RNG is not touched)."""
    from .models import build_model

    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return build_model(training.model, num_classes, training.n_segments, in_channels=training.in_channels,
                       depth=training.depth, base_width=training.width, dropout=training.dropout,
                       generator=torch.Generator().manual_seed(seed))


def as_tensor_dataset(data) -> Dataset:
    """A dataset holding ``.clips`` (N, C, T, H, W) and ``.labels`` (N,) (OrderShapes) as a float
    TensorDataset (uint8 clips scaled to [0, 1]), which fit() indexes one batch at a time; any other
    map-style dataset is returned as it is."""
    clips, labels = getattr(data, "clips", None), getattr(data, "labels", None)
    if isinstance(data, tuple) and len(data) == 2:
        clips, labels = data
    if isinstance(clips, Tensor) and isinstance(labels, Tensor):
        if clips.dtype == torch.uint8:
            clips = clips.float() / 255
        return TensorDataset(clips.float(), labels.long())
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise TypeError(f"data must be a map-style Dataset or a (clips, labels) pair, got {type(data).__name__}")
    return data


def collate_skipping_none(batch: list) -> Any:
    """default_collate over the items that are not None (a dataset may return None for a video it
    could not decode); an all-None batch gives None, which the loss skips."""
    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None


def _schedule(training: VideoTraining, total: int):
    from ..optim.schedules import get_schedule

    warmup = min(training.warmup, total)
    if training.schedule == "cosine":
        return get_schedule("cosine", warmup_steps=warmup, total_steps=max(total, warmup + 1), min_ratio=0.0)
    return get_schedule("constant", warmup_steps=warmup) if warmup else None


def _optimizer(model: nn.Module, training: VideoTraining) -> torch.optim.Optimizer:
    if training.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=training.lr, momentum=training.momentum,
                               weight_decay=training.weight_decay)
    from ..optim import AdamW

    return AdamW(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)


def train_video_model(model: nn.Module, dataset, training: VideoTraining, *, val=None, seed: int = 0,
                      checkpoint_dir=None, metrics_path=None, progress: bool | None = False, device: str = "cpu",
                      stop_after: int | None = None, eval_every: int | None = None, log_every: int | None = None,
                      collate_fn=None) -> dict:
    """Trains ``model`` in place on ``dataset`` (items (clip (C, T, H, W), label)) by fit().

    ``seed`` orders the data and seeds dropout (in a fork of the global RNG, which fit checkpoints).
    ``val``: a test-mode dataset evaluated by evaluate_video every ``eval_every`` steps and at the end.
    ``stop_after`` ends this call after that many steps of the run (the schedule still spans the
    whole run): with ``checkpoint_dir`` a later call resumes it, as after an interruption.
    Returns JSON-able ``{"loss_curve": [[step, windowed mean loss]...], "final_loss", "steps",
    "seconds", "evals"}``.
    """
    if not isinstance(training, VideoTraining):
        raise TypeError(f"training must be a VideoTraining, got {type(training).__name__}")
    data = as_tensor_dataset(dataset)
    n = len(data)
    if n < training.batch_size:
        raise ValueError(f"dataset has {n} clips, fewer than batch_size={training.batch_size}")
    per_epoch = n // training.batch_size
    total = min(s for s in (training.steps, training.epochs and training.epochs * per_epoch) if s)
    model.to(device)
    optimizer = _optimizer(model, training)
    ce = nn.CrossEntropyLoss(label_smoothing=training.label_smoothing)

    def loss_fn(module: nn.Module, batch):
        if batch is None:  # every clip of the batch was unreadable
            return next(p for p in module.parameters()).sum() * 0.0
        clips, labels = batch[0], batch[1]
        return ce(module(clips), labels)  # logits: (B, C, T, H, W) -> (B, K)

    eval_fn = None
    if val is not None:
        def eval_fn(module):
            out = evaluate_video(module, val, device=device, batch_size=training.batch_size)
            return {"val_top1": out["top1"], "val_mean_class": out["mean_class"]}

    collate = collate_fn or getattr(dataset, "collate_fn", None) or (
        default_collate if isinstance(data, TensorDataset) else collate_skipping_none)
    t0 = time.perf_counter()
    # Dropout draws from the global RNG: seed it here, inside a fork, so a run depends on its seed alone
    # (fit checkpoints and restores that state on resume) and the caller's RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        result = fit(model, optimizer, data, loss_fn, schedule=_schedule(training, total),
                     max_steps=stop_after or total, batch_size=training.batch_size, grad_clip=training.grad_clip,
                     seed=seed, device=device, checkpoint_dir=checkpoint_dir, metrics_path=metrics_path,
                     progress=progress, eval_fn=eval_fn, eval_every=eval_every,
                     log_every=log_every or max(1, total // 20), collate_fn=collate, precision="fp32")
    losses = result.losses
    window = max(1, math.ceil(0.1 * len(losses)))
    curve = [[i + 1, sum(losses[max(0, i + 1 - window): i + 1]) / len(losses[max(0, i + 1 - window): i + 1])]
             for i in range(0, len(losses), max(1, len(losses) // 50))]
    return {"loss_curve": curve, "final_loss": sum(losses[-window:]) / window if losses else float("nan"),
            "steps": result.step, "seconds": round(time.perf_counter() - t0, 2), "evals": result.evals,
            "resumed_from": result.resumed_from}


def _views(item_clip: Tensor) -> Tensor:
    """A test item's clip as (V, C, T, H, W): a single-view (C, T, H, W) clip is V = 1."""
    if item_clip.dim() == 4:
        return item_clip.unsqueeze(0)
    if item_clip.dim() == 5:
        return item_clip
    raise ValueError(f"a test clip must be (C, T, H, W) or (V, C, T, H, W), got shape {tuple(item_clip.shape)}")


@torch.no_grad()
def evaluate_video(model: nn.Module, dataset, mode: str = "prob", *, batch_size: int = 16, device: str = "cpu",
                   num_classes: int | None = None) -> dict:
    """Multi-view accuracy of ``model`` on a test-mode dataset.

    Items are ``(clip, label)`` with clip (V, C, T, H, W) — V views, clip-major — or (C, T, H, W)
    (one view); a None item (an unreadable video) is left out and counted. The N·V views are
    scored in batches of ``batch_size`` items, the scores (N, V, K) averaged by ``mode``
    ('prob': softmax then mean; 'score': mean of the logits).

    Returns ``{"top1", "top5", "mean_class", "confusion" (K, K) LongTensor (rows: true class),
    "scores" (N, K), "labels" (N,), "views": V, "skipped": unreadable items}``.
    """
    from .metrics import average_views, confusion_matrix, mean_class_accuracy, top_k_accuracy

    if mode not in ("prob", "score"):
        raise ValueError(f"mode must be 'prob' or 'score', got {mode!r}")
    data = as_tensor_dataset(dataset)
    was_training = model.training
    model.eval().to(device)
    scores, labels, skipped, views = [], [], 0, None
    try:
        for start in range(0, len(data), batch_size):
            items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
            kept = [it for it in items if it is not None]
            skipped += len(items) - len(kept)
            if not kept:
                continue
            clips = torch.stack([_views(torch.as_tensor(it[0])) for it in kept])  # (B, V, C, T, H, W)
            B, V = clips.shape[:2]
            if views is not None and V != views:
                raise ValueError(f"every test item must have the same number of views, got {views} and {V}")
            views = V
            logits = model(clips.flatten(0, 1).to(device).float()).float().cpu()  # (B*V, K)
            scores.append(average_views(logits, V, mode=mode))  # (B, V, K) -> (B, K)
            labels.append(torch.as_tensor([int(it[1]) for it in kept]))
    finally:
        model.train(was_training)
    if not scores:
        raise ValueError("the dataset yielded no readable test item")
    s, y = torch.cat(scores), torch.cat(labels)
    K = num_classes or s.shape[1]
    k5 = min(5, K)
    acc = top_k_accuracy(s, y, k=(1, k5))
    top1, top5 = (acc[1], acc[k5]) if isinstance(acc, dict) else (acc[0], acc[1])
    pred = s.argmax(1)
    return {"top1": float(top1), "top5": float(top5), "mean_class": float(mean_class_accuracy(s, y)),
            "confusion": confusion_matrix(pred, y, K), "scores": s, "labels": y, "views": views, "skipped": skipped}


def data_fingerprint(data) -> str:
    """A fingerprint of a (clips, labels) dataset's tensors; other datasets need a data_key."""
    clips, labels = getattr(data, "clips", None), getattr(data, "labels", None)
    if isinstance(clips, Tensor) and isinstance(labels, Tensor):
        return fingerprint(clips, labels)
    raise TypeError(f"cannot fingerprint a {type(data).__name__}: pass data_key= (a string naming the data)")


def trained_video_model(store: ArtifactStore, training: VideoTraining, dataset, *, num_classes: int, seed: int = 0,
                        name: str | None = None, data_key: str | None = None, **train_kw) -> tuple[nn.Module, dict]:
    """(model, info): the model of ``training`` trained on ``dataset`` from ``seed``, loaded from
    ``store`` when it holds one, else built, trained (train_video_model) and stored.

    Seed s draws the initial weights (build_video_model(seed=s)) and the data order (fit seed s + 1).
    The recipe key covers the training settings, num_classes, seed and the data (its tensors'
    fingerprint, or ``data_key``); ``name`` defaults to "video-<model>".
    """
    recipe = Recipe(name or f"video-{training.model}",
                    config={"training": training.to_dict(), "num_classes": int(num_classes)}, seed=int(seed),
                    data=data_key if data_key is not None else data_fingerprint(dataset))
    return store.get(recipe, build=lambda: build_video_model(training, num_classes, seed=seed),
                     train=lambda m: train_video_model(m, dataset, training, seed=seed + 1, **train_kw))


def save_video_model(folder: str | Path, model: nn.Module, training: VideoTraining, classes: Sequence[str],
                     **extra: Any) -> Path:
    """Writes ``folder/model.safetensors`` and ``folder/model.json`` (the recipe, class names and
    ``extra``: size, modality, …), so load_video_model rebuilds the model without a command line."""
    from safetensors.torch import save_file

    from ..files import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / MODEL_FILE, lambda tmp: save_file(state, tmp))
    meta = {"model": training.model, "classes": list(classes), "num_classes": len(classes),
            "n_segments": training.n_segments, "training": training.to_dict(), **extra}
    atomic_write(folder / META_FILE, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
    return folder


def load_video_model(folder: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, its model.json) from a folder written by save_video_model."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path, weights = folder / META_FILE, folder / MODEL_FILE
    if not meta_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{folder}: no {META_FILE} / {MODEL_FILE} (a folder written by `deepnotes video train`)")
    meta = json.loads(meta_path.read_text())
    training = VideoTraining.from_dict(meta["training"])
    model = build_video_model(training, int(meta["num_classes"]))
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval(), meta
