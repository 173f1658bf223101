"""Toy sets against their definitions (FFJORD lib/toy_data.py, NCSN's two-mode mixture), digits, .npy loading."""
import math

import numpy as np
import pytest
import torch

from deepnotes.diffusion.data import LEVELS_DIGITS, TOY_SETS, digits_data, load_array, toy_data, toy_mixture

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_within(estimate: float, truth: float, se: float, k: float = 4.0):
    assert abs(estimate - truth) <= k * se, f"{estimate} vs {truth} (standard error {se})"


@pytest.mark.parametrize("name", TOY_SETS)
def test_toy_shape_dtype_and_generator(name):
    x = toy_data(name, 500, generator=gen(0))
    assert x.shape == (500, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, toy_data(name, 500, generator=gen(0)))
    assert not torch.equal(x, toy_data(name, 500, generator=gen(1)))
    assert torch.equal(toy_data(name, 7), toy_data(name, 7))  # no generator: seed 0, never the global RNG
    assert toy_data(name, np.int64(3)).shape == (3, 2)


def test_global_rng_is_untouched():
    state = torch.get_rng_state()
    for name in TOY_SETS:
        toy_data(name, 10)
    assert torch.equal(state, torch.get_rng_state())


def test_8gaussians_modes_match_the_definition():
    means, stds, weights = toy_mixture("8gaussians", dtype=torch.float64)
    r, s = 4 / 1.414, 0.5 / 1.414
    assert torch.allclose(means.norm(dim=1), torch.full((8,), r, dtype=torch.float64))
    angles = torch.atan2(means[:, 1], means[:, 0]) / (math.pi / 4)
    assert sorted(round(a) % 8 for a in angles.tolist()) == list(range(8))  # every multiple of pi/4 once
    assert torch.allclose(stds, torch.full((8,), s, dtype=torch.float64))
    assert torch.allclose(weights, torch.full((8,), 1 / 8, dtype=torch.float64))

    n = 16000
    x = toy_data("8gaussians", n, generator=gen(3)).double()
    k = torch.cdist(x, means).argmin(1)  # neighbours are 3.06 stds apart from the midpoint: few mix-ups
    for j in range(8):
        xj = x[k == j]
        p = len(xj) / n
        assert_within(p, 1 / 8, math.sqrt(p * (1 - p) / n))
        for d in range(2):
            assert_within(xj[:, d].mean().item(), means[j, d].item(), s / math.sqrt(len(xj)))
            assert_within(xj[:, d].std().item(), s, s / math.sqrt(2 * len(xj)))
    # E|x|^2 = (16 + 2 * 0.25) / 1.414^2, exactly, with no assignment involved
    sq = (x ** 2).sum(1)
    assert_within(sq.mean().item(), 16.5 / 1.414 ** 2, sq.std().item() / math.sqrt(n))


def test_ncsn_weights_means_and_stds():
    means, stds, weights = toy_mixture("ncsn")
    assert means.tolist() == [[5, 5], [-5, -5]] and stds.tolist() == [1, 1]
    assert weights.tolist() == pytest.approx([0.8, 0.2])
    n = 8000
    x = toy_data("ncsn", n, generator=gen(4)).double()
    heavy = x.sum(1) > 0  # the modes are 14 stds apart along (1, 1)
    p = heavy.double().mean().item()
    assert_within(p, 0.8, math.sqrt(0.8 * 0.2 / n), k=3)
    for part, mu in ((x[heavy], 5.0), (x[~heavy], -5.0)):
        m = len(part)
        assert_within(part.mean(0).tolist()[0], mu, 1 / math.sqrt(m))
        assert_within(part.mean(0).tolist()[1], mu, 1 / math.sqrt(m))
        assert_within(part.std(0).tolist()[0], 1.0, 1 / math.sqrt(2 * m))


def test_toy_mixture_builds_the_gaussian_mixture():
    from deepnotes.diffusion import GaussianMixture

    params = toy_mixture("ncsn")
    mix = params.to_mixture()
    assert isinstance(mix, GaussianMixture)
    for ours, theirs in zip(params, (mix.means, mix.stds, mix.weights)):
        assert torch.equal(ours, theirs)


def test_swissroll_moments():
    # s ~ U(1.5 pi, 4.5 pi); E[s cos s] = 6 pi / 3 pi = 2, E[s sin s] = 2 / 3 pi, E s^2 = 9.75 pi^2
    n = 20000
    x = toy_data("swissroll", n, generator=gen(5)).double()
    assert_within(x[:, 0].mean().item(), 2 / 5, x[:, 0].std().item() / math.sqrt(n))
    assert_within(x[:, 1].mean().item(), 2 / (3 * math.pi) / 5, x[:, 1].std().item() / math.sqrt(n))
    sq = (x ** 2).sum(1)
    assert_within(sq.mean().item(), (9.75 * math.pi ** 2 + 2) / 25, sq.std().item() / math.sqrt(n))


def test_moons_lie_on_two_half_circles():
    # before 2x + (-1, -0.2): the upper unit half circle at (0, 0) and the lower one at (1, 0.5)
    n = 20000
    x = toy_data("moons", n, generator=gen(6)).double()
    d_out = ((x - torch.tensor([-1.0, -0.2], dtype=torch.float64)).norm(dim=1) - 2).abs()
    d_in = ((x - torch.tensor([1.0, 0.8], dtype=torch.float64)).norm(dim=1) - 2).abs()
    assert torch.minimum(d_out, d_in).mean() < 0.2  # noise std 0.2 per coordinate
    outer = d_out < d_in
    assert_within(outer.double().mean().item(), 0.5, math.sqrt(0.25 / n))
    # mean of the arcs (0, 2/pi) and (1, 0.5 - 2/pi) -> (0.5, 0.25) -> (0, 0.3)
    for d, mu in ((0, 0.0), (1, 0.3)):
        assert_within(x[:, d].mean().item(), mu, x[:, d].std().item() / math.sqrt(n))


def test_checkerboard_occupies_the_even_squares_uniformly():
    n = 16000
    x = toy_data("checkerboard", n, generator=gen(7)).double()
    assert x.abs().max() <= 4
    cells = torch.floor(x / 2).long()  # (n, 2) square indices in {-2, -1, 0, 1}
    assert ((cells.sum(1) % 2) == 0).all()
    counts = torch.bincount((cells[:, 0] + 2) * 4 + (cells[:, 1] + 2), minlength=16)
    occupied = counts[counts > 0]
    assert len(occupied) == 8
    for c in occupied.tolist():
        assert_within(c / n, 1 / 8, math.sqrt(1 / 8 * 7 / 8 / n))


def test_unknown_names_and_bad_n():
    with pytest.raises(ValueError, match="8gaussians, swissroll, moons, checkerboard, ncsn"):
        toy_data("circles", 10)
    with pytest.raises(ValueError, match="8gaussians, ncsn"):
        toy_mixture("moons")
    with pytest.raises(ValueError, match="n must be"):
        toy_data("moons", 0)


def test_digits_shape_range_levels_and_splits():
    x, y = digits_data()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.shape == (1797,)
    assert x.min() == 0 and x.max() == 1
    pixels = x * (LEVELS_DIGITS - 1)
    assert torch.equal(pixels, pixels.round()) and pixels.unique().numel() == LEVELS_DIGITS == 17
    assert sorted(y.unique().tolist()) == list(range(10))

    xtr, _ = digits_data(split="train", test_fraction=0.25, seed=1)
    xte, _ = digits_data(split="test", test_fraction=0.25, seed=1)
    assert len(xte) == round(0.25 * 1797) and len(xtr) + len(xte) == 1797
    rows = {tuple(r) for r in torch.cat([xtr, xte]).flatten(1).tolist()}
    assert len(rows) == len({tuple(r) for r in x.flatten(1).tolist()})  # together: every distinct image
    assert torch.equal(xte, digits_data(split="test", test_fraction=0.25, seed=1)[0])
    assert not torch.equal(xte, digits_data(split="test", test_fraction=0.25, seed=2)[0])
    with pytest.raises(ValueError, match="split"):
        digits_data(split="val")
    with pytest.raises(ValueError, match="test_fraction"):
        digits_data(split="test", test_fraction=1.0)


def test_load_array_round_trip_and_errors(tmp_path):
    good = tmp_path / "good.npy"
    arr = np.random.default_rng(0).normal(size=(5, 3, 2))
    np.save(good, arr)
    x = load_array(good)
    assert x.dtype == torch.float32 and x.shape == (5, 3, 2) and np.allclose(x.numpy(), arr, atol=1e-6)

    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_array(tmp_path / "missing.npy")
    cases = {
        "ints.npy": (np.arange(6).reshape(3, 2), "floating-point"),
        "flat.npy": (np.zeros(4), "shape"),
        "empty.npy": (np.zeros((0, 2)), "shape"),
        "nan.npy": (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN"),
        "objects.npy": (np.array([{"a": 1}], dtype=object), "readable"),
    }
    for fname, (value, message) in cases.items():
        np.save(tmp_path / fname, value, allow_pickle=True)
        with pytest.raises(ValueError, match=message) as err:
            load_array(tmp_path / fname)
        assert fname in str(err.value)
    np.savez(tmp_path / "two.npz", a=arr, b=arr)
    with pytest.raises(ValueError, match="npz"):
        load_array(tmp_path / "two.npz")
