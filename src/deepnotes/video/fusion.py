"""Late fusion of the class scores of several streams (two-stream: Simonyan & Zisserman 2014; TSN).

For S streams with scores s_i (N, K) (logits) and weights w_i >= 0:

    mode="prob"   p = sum_i w_i softmax(s_i) / sum_i w_i       (a distribution; TSN's RGB:flow 1:1.5)
    mode="score"  p = sum_i w_i s_i / sum_i w_i                (raw scores averaged)

The two can disagree: a stream with one very large logit dominates the score average, while after
the softmax each stream contributes at most w_i to any class.

SVMFusion: a linear SVM (scikit-learn LinearSVC, one-vs-rest) on the concatenated L2-normalised softmax
scores [softmax(s_1)/||.||_2, ..., softmax(s_S)/||.||_2] (N, S K), the two-stream paper's SVM fusion.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["fuse_scores", "SVMFusion", "FUSION_MODES"]

FUSION_MODES = ("prob", "score")


def _stack(scores: Sequence[torch.Tensor], name: str = "scores") -> torch.Tensor:
    """Sequence of S (N, K) tensors -> (S, N, K) float tensor, shapes checked."""
    if isinstance(scores, torch.Tensor) or not isinstance(scores, Sequence) or len(scores) == 0:
        raise TypeError(f"{name} must be a non-empty sequence of (N, K) tensors, one per stream")
    ts = [torch.as_tensor(s) for s in scores]
    shape = tuple(ts[0].shape)
    for i, t in enumerate(ts):
        if t.dim() != 2 or tuple(t.shape) != shape:
            raise ValueError(f"{name}[{i}] must be (N, K) = {shape} like {name}[0], got {tuple(t.shape)}")
    return torch.stack([t.float() if not t.is_floating_point() else t for t in ts])


def fuse_scores(scores: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
                mode: str = "prob") -> torch.Tensor:
    """Weighted late fusion of S streams' (N, K) scores -> (N, K) (module docstring for the formulas)."""
    if mode not in FUSION_MODES:
        raise ValueError(f"mode must be one of {FUSION_MODES}, got {mode!r}")
    s = _stack(scores)
    S = s.shape[0]
    if weights is None:
        w = torch.ones(S, dtype=s.dtype, device=s.device)
    else:
        w = torch.as_tensor(weights, dtype=s.dtype, device=s.device)
        if w.shape != (S,):
            raise ValueError(f"weights must have one entry per stream ({S}), got shape {tuple(w.shape)}")
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
    if mode == "prob":
        s = s.softmax(dim=-1)
    return (w[:, None, None] * s).sum(0) / w.sum()


def _svm_features(scores: Sequence[torch.Tensor]) -> np.ndarray:
    p = _stack(scores).double().softmax(dim=-1)  # (S, N, K)
    p = p / p.norm(dim=-1, keepdim=True)
    return p.permute(1, 0, 2).reshape(p.shape[1], -1).cpu().numpy()  # (S, N, K) -> (N, S*K)


class SVMFusion:
    """Linear-SVM fusion of streams' scores: fit(list_of_scores, labels), predict(list_of_scores).

    C: the SVM's inverse regularisation; seed: LinearSVC's random_state (its dual coordinate descent).
    """

    def __init__(self, C: float = 1.0, seed: int = 0, max_iter: int = 10000):
        if C <= 0:
            raise ValueError(f"C must be positive, got {C!r}")
        self.C, self.seed, self.max_iter = C, seed, max_iter
        self.svm = None
        self.n_streams: int | None = None

    def fit(self, scores: Sequence[torch.Tensor], labels) -> "SVMFusion":
        from sklearn.svm import LinearSVC

        X = _svm_features(scores)
        y = torch.as_tensor(labels).long().cpu().numpy()
        if y.shape != (X.shape[0],):
            raise ValueError(f"labels must have shape ({X.shape[0]},) to match the scores, got {y.shape}")
        if len(np.unique(y)) < 2:
            raise ValueError("labels must contain at least two classes to fit an SVM")
        self.svm = LinearSVC(C=self.C, random_state=self.seed, max_iter=self.max_iter).fit(X, y)
        self.n_streams = len(scores)
        return self

    def _check_fitted(self, scores) -> np.ndarray:
        if self.svm is None:
            raise ValueError("SVMFusion is not fitted: call fit(list_of_scores, labels) first")
        if len(scores) != self.n_streams:
            raise ValueError(f"fitted on {self.n_streams} streams, got {len(scores)}")
        return _svm_features(scores)

    def decision_function(self, scores: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, n_classes) SVM margins, one column per class of the training labels (sorted)."""
        d = torch.as_tensor(self.svm.decision_function(self._check_fitted(scores)))
        return torch.stack([-d, d], dim=1) if d.dim() == 1 else d  # binary: sklearn gives classes_[1]'s margin

    def predict(self, scores: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N,) predicted labels."""
        X = self._check_fitted(scores)
        return torch.as_tensor(self.svm.predict(X)).long()
