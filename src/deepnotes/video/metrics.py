"""Classification metrics of mmaction2's AccMetric, and multi-view score averaging.

    top-k accuracy       (1/N) sum_n [rank_n < k], rank_n = #{j : s_nj > s_ny} + #{j < y : s_nj = s_ny}
                         (ties broken towards the lower class index, as argmax and a stable sort)
    mean-class accuracy  (1/|C|) sum_{c in C} (correct in class c) / (count of class c), C = classes
                         present in the labels (per-class recall averaged; sklearn's balanced
                         accuracy). mmaction2 also averages in a 0 for a class that is only predicted.
    confusion matrix     M[i, j] = #{n : label_n = i, pred_n = j} (rows true, columns predicted)
    average_views        scores (N, V, K) -> (N, K): mode "prob" averages softmax(s) over V
                         (mmaction2's average_clips='prob'); "score" averages the raw logits.
Multi-view scores arrive as (N * V, K) with the V views of a video adjacent (video-major, and
within a video clip-major as VideoDataset yields them): row n * V + v is view v of video n.
"""
from __future__ import annotations

import torch

__all__ = ["top_k_accuracy", "mean_class_accuracy", "confusion_matrix", "average_views"]

AVERAGE_MODES = ("prob", "score")


def _scores_labels(scores, labels) -> tuple[torch.Tensor, torch.Tensor]:
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels)
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (N, K), got {tuple(scores.shape)}")
    if labels.shape != scores.shape[:1]:
        raise ValueError(f"labels must have shape ({scores.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if scores.shape[0] == 0:
        raise ValueError("scores and labels are empty")
    if bool(((labels < 0) | (labels >= scores.shape[1])).any()):
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}), got min {int(labels.min())}, max {int(labels.max())}")
    return scores.detach().double(), labels.long()


def _ranks(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rank (0 = best) of the true class in each row, ties towards the lower index."""
    true = scores.gather(1, labels[:, None])  # (N, 1)
    index = torch.arange(scores.shape[1])[None, :]
    return ((scores > true) | ((scores == true) & (index < labels[:, None]))).sum(1)


def top_k_accuracy(scores, labels, k=(1, 5)):
    """Fraction of rows whose label is among the k best scores: a float for an int k, else {k: float}."""
    scores, labels = _scores_labels(scores, labels)
    ks = (k,) if isinstance(k, int) else tuple(k)
    if not ks or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in ks):
        raise ValueError(f"k must be a positive int or a sequence of them, got {k!r}")
    ranks = _ranks(scores, labels)
    result = {x: float((ranks < x).double().mean()) for x in ks}
    return result[k] if isinstance(k, int) else result


def confusion_matrix(pred, labels, num_classes: int) -> torch.Tensor:
    """LongTensor (num_classes, num_classes): M[true, predicted] counts."""
    pred, labels = torch.as_tensor(pred).long().reshape(-1), torch.as_tensor(labels).long().reshape(-1)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if pred.shape != labels.shape:
        raise ValueError(f"pred and labels must have the same length, got {pred.numel()} and {labels.numel()}")
    for name, x in (("pred", pred), ("labels", labels)):
        if x.numel() and bool(((x < 0) | (x >= num_classes)).any()):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got min {int(x.min())}, max {int(x.max())}")
    flat = torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def mean_class_accuracy(scores, labels) -> float:
    """Per-class recall of the top-1 prediction, averaged over the classes present in labels."""
    scores, labels = _scores_labels(scores, labels)
    pred = scores.argmax(1)  # the first maximum: the same tie rule as _ranks
    matrix = confusion_matrix(pred, labels, scores.shape[1]).double()
    counts = matrix.sum(1)
    present = counts > 0
    return float((matrix.diagonal()[present] / counts[present]).mean())


def average_views(scores, n_views: int, mode: str = "prob") -> torch.Tensor:
    """Per-video scores (N, K) from view scores (N * n_views, K) or (N, n_views, K): mean of softmax or of logits."""
    if mode not in AVERAGE_MODES:
        raise ValueError(f"mode must be one of {', '.join(AVERAGE_MODES)}, got {mode!r}")
    if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
        raise ValueError(f"n_views must be a positive int, got {n_views!r}")
    scores = torch.as_tensor(scores)
    if scores.dim() == 2:
        if scores.shape[0] % n_views:
            raise ValueError(f"scores has {scores.shape[0]} rows, not a multiple of n_views={n_views}")
        scores = scores.reshape(-1, n_views, scores.shape[1])  # (N * V, K) -> (N, V, K), views of a video adjacent
    elif scores.dim() != 3 or scores.shape[1] != n_views:
        raise ValueError(f"scores must have shape (N * {n_views}, K) or (N, {n_views}, K), got {tuple(scores.shape)}")
    if mode == "prob":
        scores = scores.softmax(dim=-1)
    return scores.mean(dim=1)
