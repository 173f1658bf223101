"""Data for the score-model notes: 2-D toy sets, sklearn digits and a user's .npy array.

The toy sets follow FFJORD's ``lib/toy_data.py`` (Grathwohl et al. 2019), drawn with torch
from a generator instead of numpy's global state; the two-mode set is NCSN's
(Song & Ermon 2019, ``runners/toy_runner.py``, ``models/gmm.py``):

    8gaussians    x = (4 c_k + 0.5 z) / 1.414,  k ~ U{0..7},  c_k unit vectors at angles k pi/4,
                  z ~ N(0, I): a mixture of 8 equal Gaussians, centres 4/1.414 = 2.83, std 0.5/1.414
    swissroll     s = 1.5 pi (1 + 2u),  x = (s cos s + z1, s sin s + z2) / 5          (noise 1.0)
    moons         sklearn's two moons with noise 0.1, then 2 x + (-1, -0.2)
    checkerboard  x1 ~ U(-2, 2),  x2 = v - 2b + (floor(x1) mod 2),  v ~ U(0, 1), b ~ Bernoulli(1/2),
                  then 2 (x1, x2): 8 unit-density squares of side 2 in [-4, 4]^2
    ncsn          0.8 N((5, 5), I) + 0.2 N((-5, -5), I)                         (heavy mode at +5)

Two details differ from the numpy originals on purpose: moons draws its arc angle
uniformly per point (sklearn lays them on a linspace grid and shuffles: the same law
in the limit, but not i.i.d.), and every set is float32 (n, 2).

sklearn digits are 1,797 8x8 images with integer pixels 0..16, i.e. LEVELS_DIGITS = 17
grey levels; they are returned as pixel / 16 in [0, 1], so the dequantisation offset of
a bits/dim figure is log2(17) = 4.09 bits, not 8.

Randomness: ``generator=None`` means ``torch.Generator().manual_seed(0)``, never torch's
global generator, so a call without a generator is reproducible (pass one for fresh draws).
"""
from __future__ import annotations

import functools
import math
import operator
import os
from typing import NamedTuple

import torch

__all__ = ["TOY_SETS", "LEVELS_DIGITS", "toy_data", "toy_mixture", "ToyMixture", "digits_data", "load_array"]

TOY_SETS = ("8gaussians", "swissroll", "moons", "checkerboard", "ncsn")
LEVELS_DIGITS = 17  # sklearn digits' pixels are the integers 0..16
_MIXTURES = ("8gaussians", "ncsn")
_SCALE_8G = 1.414  # FFJORD divides by this literal, not by sqrt(2)


def _generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _check_name(name: str, valid: tuple[str, ...], what: str) -> None:
    if name not in valid:
        raise ValueError(f"{what}: unknown name {name!r}; valid names are {', '.join(valid)}")


class ToyMixture(NamedTuple):
    """Exact parameters of a Gaussian-mixture toy set: means (K, D), stds (K,) isotropic, weights (K,)."""

    means: torch.Tensor
    stds: torch.Tensor
    weights: torch.Tensor

    def to_mixture(self):
        """The same parameters as a deepnotes.diffusion.mixture.GaussianMixture."""
        from .mixture import GaussianMixture  # imported here: mixture.py is a sibling, not a dependency

        return GaussianMixture(self.means, self.stds, self.weights)


def toy_mixture(name: str, *, dtype: torch.dtype = torch.float32) -> ToyMixture:
    """(means (K, 2), stds (K,), weights (K,)) of "8gaussians" (K=8) or "ncsn" (K=2), exactly as toy_data draws.

    Component order: 8gaussians as FFJORD's centre list ((1,0), (-1,0), (0,1), (0,-1), then the
    diagonals (+,+), (+,-), (-,+), (-,-)); ncsn heavy mode first.
    """
    _check_name(name, _MIXTURES, "toy_mixture")
    if name == "8gaussians":
        r = 1.0 / math.sqrt(2.0)
        unit = torch.tensor([[1, 0], [-1, 0], [0, 1], [0, -1], [r, r], [r, -r], [-r, r], [-r, -r]], dtype=torch.float64)
        means = 4.0 * unit / _SCALE_8G
        stds = torch.full((8,), 0.5 / _SCALE_8G, dtype=torch.float64)
        weights = torch.full((8,), 1.0 / 8, dtype=torch.float64)
    else:
        means = torch.tensor([[5.0, 5.0], [-5.0, -5.0]], dtype=torch.float64)
        stds = torch.ones(2, dtype=torch.float64)
        weights = torch.tensor([0.8, 0.2], dtype=torch.float64)
    return ToyMixture(means.to(dtype), stds.to(dtype), weights.to(dtype))


def _sample_mixture(mix: ToyMixture, n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.multinomial(mix.weights.double(), n, replacement=True, generator=g)  # (n,) component indices
    z = torch.randn(n, mix.means.shape[1], generator=g, dtype=torch.float64)
    return mix.means.double()[k] + mix.stds.double()[k, None] * z


def toy_data(name: str, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """n i.i.d. points of the 2-D toy set `name` (one of TOY_SETS): float32 (n, 2)."""
    _check_name(name, TOY_SETS, "toy_data")
    if isinstance(n, bool) or not hasattr(n, "__index__") or operator.index(n) < 1:
        raise ValueError(f"toy_data: n must be a positive int, got {n!r}")
    n = operator.index(n)
    g = _generator(generator)
    f64 = torch.float64
    if name in _MIXTURES:
        x = _sample_mixture(toy_mixture(name, dtype=f64), n, g)
    elif name == "swissroll":
        s = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=f64))
        z = torch.randn(n, 2, generator=g, dtype=f64)  # sklearn's noise=1.0 on the two kept coordinates
        x = (torch.stack([s * torch.cos(s), s * torch.sin(s)], dim=1) + z) / 5
    elif name == "moons":
        angle = math.pi * torch.rand(n, generator=g, dtype=f64)
        inner = torch.rand(n, generator=g, dtype=f64) < 0.5  # which moon
        outer_xy = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        inner_xy = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
        x = torch.where(inner[:, None], inner_xy, outer_xy) + 0.1 * torch.randn(n, 2, generator=g, dtype=f64)
        x = 2 * x + torch.tensor([-1.0, -0.2], dtype=f64)
    else:  # checkerboard
        x1 = 4 * torch.rand(n, generator=g, dtype=f64) - 2
        b = torch.randint(0, 2, (n,), generator=g).to(f64)
        x2 = torch.rand(n, generator=g, dtype=f64) - 2 * b + torch.remainder(torch.floor(x1), 2)
        x = 2 * torch.stack([x1, x2], dim=1)
    return x.float()


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # heavy: imported only when digits are used; shipped, no download

    d = load_digits()
    return torch.tensor(d.images, dtype=torch.int64), torch.tensor(d.target, dtype=torch.int64)


def digits_data(*, split: str | None = None, test_fraction: float = 0.2,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn digits: (images float32 (N, 1, 8, 8) = pixel / 16 in [0, 1], labels int64 (N,)).

    split=None gives all 1,797 images in sklearn's order; "train"/"test" split one random
    permutation drawn from `seed`: the first round(test_fraction N) images are the test set.
    The two splits of the same (test_fraction, seed) are disjoint and cover the data.
    """
    if split not in (None, "train", "test"):
        raise ValueError(f"digits_data: split must be None, 'train' or 'test', got {split!r}")
    if not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"digits_data: test_fraction must be in (0, 1), got {test_fraction!r}")
    pixels, labels = _digits()
    images = pixels.unsqueeze(1).float() / (LEVELS_DIGITS - 1)  # (N, 8, 8) -> (N, 1, 8, 8) in [0, 1]
    if split is None:
        return images, labels.clone()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(int(seed)))
    n_test = int(round(test_fraction * len(labels)))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return images[idx], labels[idx]


def load_array(path: str | os.PathLike) -> torch.Tensor:
    """A user's data set from a .npy file holding a float array (N, ...): float32 tensor (N, ...).

    Fails with the path in the message when the file is missing (FileNotFoundError), is not a
    plain .npy array, is not floating point, has fewer than 2 dimensions or no rows, or holds
    NaN or infinity (ValueError). Pickled objects are never loaded.
    """
    import numpy as np

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_array: no such file: {path!r}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"load_array: {path!r} is not a readable .npy array ({err})") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise ValueError(f"load_array: {path!r} must hold a single array (.npy), got an .npz archive")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"load_array: {path!r} must hold a floating-point array, got dtype {arr.dtype}; "
                         "scale integer data to floats first (e.g. pixels / 255)")
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise ValueError(f"load_array: {path!r} must hold an array of shape (N, ...) with N >= 1 and at least "
                         f"2 dimensions, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"load_array: {path!r} holds {int(bad.sum())} NaN or infinite values "
                         f"(first at index {tuple(int(i) for i in np.argwhere(bad)[0])})")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
