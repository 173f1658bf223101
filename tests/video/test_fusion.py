"""Late fusion (references/video.md section 7, check 5)."""
import pytest
import torch

from deepnotes.video.fusion import SVMFusion, _svm_features, fuse_scores


def _scores(n=6, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 3, torch.randn(n, k, generator=g) * 3


def complementary(n, seed):
    """Two streams over 4 classes: A informative on classes 0-1 only, B on classes 2-3 only."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    a, b = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    idx = torch.arange(n)
    a[idx[labels < 2], labels[labels < 2]] += 3.0
    b[idx[labels >= 2], labels[labels >= 2]] += 3.0
    return [a, b], labels


def accuracy(scores, labels):
    return (scores.argmax(1) == labels).float().mean().item()


def test_prob_is_the_weighted_mean_of_softmaxes():
    a, b = _scores()
    fused = fuse_scores([a, b], weights=[1.0, 1.5])
    torch.testing.assert_close(fused, (1.0 * a.softmax(1) + 1.5 * b.softmax(1)) / 2.5)
    torch.testing.assert_close(fused.sum(1), torch.ones(len(a)))
    torch.testing.assert_close(fuse_scores([a, b]), (a.softmax(1) + b.softmax(1)) / 2)
    torch.testing.assert_close(fuse_scores([a, b], [2, 3], mode="score"), (2 * a + 3 * b) / 5)
    torch.testing.assert_close(fuse_scores([a]), a.softmax(1))


def test_symmetric_under_swapping_streams():
    a, b = _scores(seed=1)
    for mode in ("prob", "score"):
        torch.testing.assert_close(fuse_scores([a, b], mode=mode), fuse_scores([b, a], mode=mode))
        torch.testing.assert_close(fuse_scores([a, b], [1, 2], mode), fuse_scores([b, a], [2, 1], mode))


def test_prob_and_score_differ_on_a_constructed_case():
    # a: sure of class 2 with a large logit on class 1 too; b: sure of class 0.
    a, b = torch.tensor([[0.0, 10.0, 11.0]]), torch.tensor([[5.0, 0.0, -10.0]])
    # score: (a + b)/2 = [2.5, 5, 0.5] -> class 1;  prob: [0.497, 0.138, 0.366] -> class 0
    assert fuse_scores([a, b], mode="score").argmax().item() == 1
    assert fuse_scores([a, b], mode="prob").argmax().item() == 0


def test_fusion_beats_either_stream_on_complementary_data():
    (a, b), labels = complementary(400, seed=2)
    fused = fuse_scores([a, b])
    assert accuracy(fused, labels) > max(accuracy(a, labels), accuracy(b, labels)) + 0.1


def test_svm_fusion_fits_on_l2_normalised_softmax_scores():
    train, y_train = complementary(400, seed=3)
    test, y_test = complementary(400, seed=4)
    feats = torch.as_tensor(_svm_features(train)).view(400, 2, 4)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(400, 2, dtype=torch.float64))
    svm = SVMFusion(seed=0).fit(train, y_train)
    pred = svm.predict(test)
    assert pred.shape == (400,) and pred.dtype == torch.long
    acc = (pred == y_test).float().mean().item()
    assert acc > max(accuracy(test[0], y_test), accuracy(test[1], y_test)) + 0.1
    assert svm.decision_function(test).shape == (400, 4)


def test_errors():
    a, b = _scores()
    with pytest.raises(ValueError, match="mode"):
        fuse_scores([a, b], mode="max")
    with pytest.raises(ValueError, match="weights"):
        fuse_scores([a, b], weights=[1.0])
    with pytest.raises(ValueError, match="weights"):
        fuse_scores([a, b], weights=[-1.0, 1.0])
    with pytest.raises(ValueError, match=r"scores\[1\]"):
        fuse_scores([a, b[:, :3]])
    with pytest.raises(TypeError, match="sequence"):
        fuse_scores(a)
    with pytest.raises(ValueError, match="not fitted"):
        SVMFusion().predict([a, b])
