"""Top-k, mean-class accuracy, confusion matrix (against scikit-learn) and multi-view averaging."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix as sk_confusion_matrix
from sklearn.metrics import top_k_accuracy_score

from deepnotes.video import average_views, confusion_matrix, mean_class_accuracy, top_k_accuracy


def test_top_k_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    scores, labels = torch.randn(200, 10, generator=g), torch.randint(10, (200,), generator=g)
    result = top_k_accuracy(scores, labels, k=(1, 3, 5))
    for k in (1, 3, 5):
        assert result[k] == pytest.approx(top_k_accuracy_score(labels.numpy(), scores.numpy(), k=k,
                                                               labels=np.arange(10)))
    assert top_k_accuracy(scores, labels, k=1) == result[1]
    assert top_k_accuracy(scores[:, :3], labels.clamp(max=2), k=5) == 1.0  # k beyond K: every label is in


def test_ties_are_not_free_accuracy():
    # a constant predictor is right only for the first class (argmax's tie rule), not everywhere
    scores, labels = torch.zeros(4, 4), torch.tensor([0, 1, 2, 3])
    assert top_k_accuracy(scores, labels, k=1) == 0.25
    assert top_k_accuracy(scores, labels, k=2) == 0.5


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_mean_class_differs_from_top1_on_imbalanced_labels():
    # 8 of class 0 (all right), 2 of class 1 (all predicted 0): top-1 = 8/10, mean-class = (1 + 0)/2
    labels = torch.tensor([0] * 8 + [1] * 2)
    scores = torch.tensor([[2.0, 1.0]] * 10)
    assert top_k_accuracy(scores, labels, k=1) == pytest.approx(0.8)
    assert mean_class_accuracy(scores, labels) == pytest.approx(0.5)
    g = torch.Generator().manual_seed(1)
    scores, labels = torch.randn(300, 6, generator=g), torch.randint(6, (300,), generator=g) % 4  # classes 4, 5 absent
    assert mean_class_accuracy(scores, labels) == pytest.approx(
        balanced_accuracy_score(labels.numpy(), scores.argmax(1).numpy()))


def test_confusion_matrix_matches_sklearn():
    g = torch.Generator().manual_seed(2)
    pred, labels = torch.randint(5, (100,), generator=g), torch.randint(5, (100,), generator=g)
    matrix = confusion_matrix(pred, labels, 5)
    assert matrix.dtype == torch.long and matrix.shape == (5, 5)
    assert np.array_equal(matrix.numpy(), sk_confusion_matrix(labels.numpy(), pred.numpy(), labels=range(5)))
    assert confusion_matrix(torch.tensor([1]), torch.tensor([0]), 3)[0, 1] == 1  # rows true, columns predicted
    with pytest.raises(ValueError, match=r"pred must lie in \[0, 3\)"):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)


def test_prob_and_score_averaging_disagree_on_a_constructed_case():
    # view 1 is very sure of class 0, views 2 and 3 fairly sure of class 1
    views = torch.tensor([[20.0, 0.0], [0.0, 3.0], [0.0, 3.0]])
    score = average_views(views, 3, mode="score")
    assert torch.allclose(score, torch.tensor([[20 / 3, 2.0]]))  # mean logits: class 0
    p1 = 1 / (1 + math.exp(-3.0))  # softmax of (0, 3): class 1
    p0 = 1 / (1 + math.exp(-20.0))
    prob = average_views(views, 3, mode="prob")
    assert torch.allclose(prob, torch.tensor([[(p0 + 2 * (1 - p1)) / 3, ((1 - p0) + 2 * p1) / 3]]))
    assert score.argmax(1).item() == 0 and prob.argmax(1).item() == 1


def test_multi_clip_reshape_keeps_views_of_a_video_together():
    # rows n * V + v: view v of video n (clip-major inside a video, as VideoDataset yields them)
    N, V, K = 3, 4, 5
    per_view = torch.arange(N * V * K, dtype=torch.float64).reshape(N, V, K)
    flat = per_view.reshape(N * V, K)
    assert torch.equal(average_views(flat, V, mode="score"), per_view.mean(1))
    assert torch.equal(average_views(per_view, V, mode="score"), per_view.mean(1))
    one = torch.randn(6, K, dtype=torch.float64)
    assert torch.allclose(average_views(one, 1, mode="prob"), one.softmax(-1))  # one view: single-clip scores
    with pytest.raises(ValueError, match="multiple of n_views"):
        average_views(torch.zeros(7, K), 2)
    with pytest.raises(ValueError, match="mode"):
        average_views(flat, V, mode="max")


def test_input_errors():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        top_k_accuracy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        mean_class_accuracy(torch.zeros(2, 3), torch.tensor([0]))
    with pytest.raises(TypeError, match="integers"):
        top_k_accuracy(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="k must be"):
        top_k_accuracy(torch.zeros(2, 3), torch.tensor([0, 1]), k=0)
