"""Sample metrics against closed forms, scipy references and an exact transport LP; the digits classifier."""
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import scipy.stats
import torch

from deepnotes.artifacts import ArtifactStore, Recipe
from deepnotes.diffusion.data import digits_data, toy_data, toy_mixture
from deepnotes.diffusion.metrics import (
    DigitsFeatures, digits_fd, energy_distance, feature_stats, fit_digits_features, frechet_distance, mmd_rbf,
    mode_weights, sliced_wasserstein, train_digits_features, wasserstein2_1d,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def w2_squared_lp(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W2^2 between uniform empirical measures, as an optimal-transport linear program."""
    n, m = len(a), len(b)
    cost = (a[:, None] - b[None, :]) ** 2
    rows = np.kron(np.eye(n), np.ones(m))  # sum_j P_ij = 1/n
    cols = np.kron(np.ones(n), np.eye(m))  # sum_i P_ij = 1/m
    res = scipy.optimize.linprog(cost.ravel(), A_eq=np.vstack([rows, cols]),
                                 b_eq=np.r_[np.full(n, 1 / n), np.full(m, 1 / m)], bounds=(0, None), method="highs")
    return res.fun


@pytest.mark.parametrize("n,m", [(6, 6), (5, 7), (4, 9), (1, 3)])
def test_1d_w2_equals_the_transport_lp(n, m):
    g = np.random.default_rng(n * 10 + m)
    a, b = g.normal(size=(n, 3)), g.normal(1.0, 2.0, size=(m, 3))
    ours = wasserstein2_1d(torch.from_numpy(a), torch.from_numpy(b))
    for p in range(3):
        assert ours[p].item() == pytest.approx(w2_squared_lp(a[:, p], b[:, p]), rel=1e-7, abs=1e-10)


@pytest.mark.parametrize("repeat", [1, 3])
def test_sw2_of_a_shift_is_norm_over_sqrt2(repeat):
    # W2^2 along theta of a pure shift is (theta.m)^2 exactly; its mean over the circle is |m|^2 / 2.
    # repeat=3 takes the unequal-size path (the same empirical measure, 3N points).
    x = torch.randn(200, 2, generator=gen(0))
    m = torch.tensor([1.5, -2.0])
    y = x.repeat(repeat, 1) + m
    P = 4096
    sw = sliced_wasserstein(x, y, n_projections=P, generator=gen(1))
    target = m.pow(2).sum().item() / 2
    se = m.pow(2).sum().item() * math.sqrt(1 / 8 / P)  # Var cos^2(phi) = 1/8
    assert abs(sw ** 2 - target) < 4 * se
    assert sw == pytest.approx(m.norm().item() / math.sqrt(2), rel=0.03)


def test_sw2_of_independent_gaussian_samples_shrinks_with_n():
    def mean_sw(n):
        return np.mean([sliced_wasserstein(torch.randn(n, 2, generator=gen(2 * s)),
                                           torch.randn(n, 2, generator=gen(2 * s + 1)), generator=gen(99))
                        for s in range(4)])

    small, large = mean_sw(200), mean_sw(4000)
    assert large < 0.1 and large < small / 2.5  # about 1/sqrt(n): sqrt(20) = 4.5


def test_sw2_reproducible_and_bad_input():
    x, y = torch.randn(50, 3), torch.randn(60, 3)
    assert sliced_wasserstein(x, y) == sliced_wasserstein(x, y)  # generator=None: seed 0
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(x, y, n_projections=0)
    with pytest.raises(ValueError, match="same sample shape"):
        sliced_wasserstein(x, torch.randn(60, 2))
    with pytest.raises(ValueError, match="y must be"):
        energy_distance(x, torch.randn(5))


def test_energy_distance_closed_forms_and_scipy():
    x = torch.randn(300, 2, generator=gen(3))
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    a, b = torch.tensor([0.0, 0.0]), torch.tensor([3.0, 4.0])
    assert energy_distance(a.repeat(5, 1), b.repeat(7, 1)) == pytest.approx(2 * 5.0)  # point masses: 2|a - b|
    # X uniform on {a, b}, Y = c: 2 (|a-c| + |b-c|)/2 - 2|a-b|/4 - 0
    c = torch.tensor([[0.0, 4.0]])
    assert energy_distance(torch.stack([a, b]), c) == pytest.approx(4.0 + 3.0 - 5.0 / 2)
    # 1-D: scipy's energy_distance is the square root of the same V-statistic
    u, v = np.random.default_rng(0).normal(size=40), np.random.default_rng(1).normal(0.5, 1, size=55)
    ours = energy_distance(torch.from_numpy(u)[:, None], torch.from_numpy(v)[:, None])
    assert ours == pytest.approx(scipy.stats.energy_distance(u, v) ** 2, rel=1e-10)


def test_mmd_closed_form_identical_and_shifted():
    bw = (0.1, 0.5, 1.0)

    def k(p, q):
        return sum(math.exp(-(p - q) ** 2 / (2 * h * h)) for h in bw) / len(bw)

    xs, ys = [0.0, 0.3], [1.0, 2.0]
    exact = k(*xs) + k(*ys) - (k(0.0, 1.0) + k(0.0, 2.0) + k(0.3, 1.0) + k(0.3, 2.0)) / 2
    x64, y64 = torch.tensor(xs, dtype=torch.float64)[:, None], torch.tensor(ys, dtype=torch.float64)[:, None]
    assert mmd_rbf(x64, y64, bw) == pytest.approx(exact, rel=1e-12)
    n = 500
    x, y = torch.randn(n, 2, generator=gen(4)), torch.randn(n, 2, generator=gen(5))
    # y = x: the U-statistic is 2 (S / (n^2 (n-1)) - 1/n), S the off-diagonal kernel sum: in [-2/n, 0]
    assert -2 / n <= mmd_rbf(x, x) <= 0
    null = mmd_rbf(x, y)  # same law: about 0, either sign
    assert abs(null) < 5e-3
    assert mmd_rbf(x, y + torch.tensor([1.0, 0.0])) > 10 * abs(null) + 0.02
    with pytest.raises(ValueError, match="bandwidths"):
        mmd_rbf(x, x, bandwidths=(0.0,))
    with pytest.raises(ValueError, match="at least 2"):
        mmd_rbf(x[:1], x)


def test_mode_weights_recover_the_ncsn_weights():
    n = 4000
    means = toy_mixture("ncsn").means
    w = mode_weights(toy_data("ncsn", n, generator=gen(5)), means)
    se = math.sqrt(0.8 * 0.2 / n)
    assert abs(w[0].item() - 0.8) < 3 * se and abs(w[1].item() - 0.2) < 3 * se and w.sum().item() == pytest.approx(1)


def test_mode_weights_outliers():
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    samples = torch.tensor([[0.0, 0.1], [10.0, 0.2], [5.1, 0.0], [100.0, 100.0]])
    assert mode_weights(samples, means).tolist() == [0.25, 0.75]
    assert mode_weights(samples, means, radius=1.0).tolist() == [0.25, 0.25]  # half are outliers
    with_nan = torch.cat([samples, torch.tensor([[float("nan"), 0.0]])])
    assert mode_weights(with_nan, means).tolist() == [0.2, 0.6]  # a diverged sample counts for no mode
    with pytest.raises(ValueError, match="radius"):
        mode_weights(samples, means, radius=0.0)
    with pytest.raises(ValueError, match="samples must be"):
        mode_weights(samples, torch.zeros(2, 3))


def test_frechet_distance_closed_forms_and_scipy():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    exact = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum()
    assert frechet_distance(mu1, s1.diag(), mu2, s2.diag()) == pytest.approx(exact.item(), rel=1e-12)
    assert frechet_distance(mu1, s1.diag(), mu1, s1.diag()) == pytest.approx(0.0, abs=1e-12)
    # full, non-commuting covariances: against scipy's sqrtm of S1 S2
    g = np.random.default_rng(0)
    a, b = g.normal(size=(4, 4)), g.normal(size=(4, 4))
    c1, c2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    m1, m2 = g.normal(size=4), g.normal(size=4)
    ref = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    t = torch.from_numpy
    assert frechet_distance(t(m1), t(c1), t(m2), t(c2)) == pytest.approx(ref, rel=1e-9)
    with pytest.raises(ValueError, match="cov1"):
        frechet_distance(t(m1), t(c1[:3, :3]), t(m2), t(c2))


def test_feature_stats_match_numpy():
    f = torch.randn(50, 3, generator=gen(6))
    mu, cov = feature_stats(f)
    assert np.allclose(mu.numpy(), f.numpy().mean(0)) and np.allclose(cov.numpy(), np.cov(f.numpy().T))


@pytest.fixture(scope="module")
def classifier():
    return train_digits_features(generator=gen(0))


def test_digits_classifier_accuracy(classifier):
    x, y = digits_data(split="test")
    acc = classifier.accuracy(x, y)
    assert acc >= 0.9 and acc == classifier.fit_info["test_accuracy"]
    assert classifier.features(x).shape == (len(x), 64)


def test_digits_fd_separates_real_from_noise(classifier):
    test, _ = digits_data(split="test")
    train, _ = digits_data(split="train")
    real = digits_fd(test, train, classifier)
    noise = digits_fd(torch.rand(len(test), 1, 8, 8, generator=gen(7)), train, classifier)
    assert digits_fd(train, train, classifier) == pytest.approx(0.0, abs=1e-9)  # singular covariances
    assert real < 0.1 * noise


def test_digits_features_save_load_and_determinism(classifier, tmp_path):
    store = ArtifactStore(tmp_path)
    recipe = Recipe("digits-features", config={"steps": 600}, seed=0)
    store.save(recipe, classifier, classifier.fit_info)
    fresh = DigitsFeatures(generator=gen(1))
    assert store.load(recipe, fresh) == classifier.fit_info
    x, _ = digits_data(split="test")
    assert torch.equal(fresh.features(x), classifier.features(x))

    a, b = DigitsFeatures(generator=gen(2)), DigitsFeatures(generator=gen(2))
    fit_digits_features(a, steps=5, generator=gen(3))
    fit_digits_features(b, steps=5, generator=gen(3))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    with pytest.raises(ValueError, match="x must be"):
        a.features(torch.rand(3, 64))
