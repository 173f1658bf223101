"""Sample-quality metrics for score models: two-sample distances, mode weights and a digits FID.

For samples x_1..x_N ~ P and y_1..y_M ~ Q in R^D (images are flattened to D = C H W):

    SW2(P, Q)^2 = E_theta W2^2(theta.P, theta.Q),  theta ~ U(S^{D-1})   (sliced 2-Wasserstein)
    W2^2 in 1-D = int_0^1 (F^-1(u) - G^-1(u))^2 du                        (quantile functions)
    ED(P, Q)    = 2 E|X - Y| - E|X - X'| - E|Y - Y'|                      (energy distance)
    MMD^2(P, Q) = E k(X, X') + E k(Y, Y') - 2 E k(X, Y)                   (kernel two-sample)
    FD          = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})           (Frechet distance of Gaussians)

Estimators, stated because published toy numbers rarely say:
- sliced_wasserstein returns SW2 (not its square): the square root of the mean over
  n_projections random unit directions of the exact 1-D W2^2 between the two projected
  empirical distributions; with N != M the two step quantile functions are integrated exactly
  on the merged grid {i/N} U {j/M} (for N = M this is the mean squared difference of sorted values).
- energy_distance is the V-statistic (all pairs, diagonal included): the energy distance of the
  two empirical distributions themselves, >= 0 and exactly 0 for identical samples.
- mmd_rbf is the unbiased U-statistic of MMD^2 (diagonals excluded; it can be slightly negative)
  with k = mean over bandwidths h of exp(-|a - b|^2 / (2 h^2)), h in (0.1, 0.5, 1.0) by default:
  the median-distance bandwidth makes every sampler look perfect on the 2-D toys.
- digits_fd is FID's recipe with a small digits classifier trained here (DigitsFeatures) in place
  of Inception: Gaussians fitted to its penultimate-layer features, unbiased covariances.

Randomness (projections, classifier training): ``generator=None`` means a generator seeded 0.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from ..nn.init import rng_scope

__all__ = ["sliced_wasserstein", "energy_distance", "mmd_rbf", "mode_weights", "frechet_distance", "feature_stats",
           "DigitsFeatures", "fit_digits_features", "train_digits_features", "digits_fd"]


def _generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    return generator if generator is not None else torch.Generator(device=device).manual_seed(0)


def _pair(x: torch.Tensor, y: torch.Tensor, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, ...), (M, ...) -> float64 (N, D), (M, D)."""
    for name, v in (("x", x), ("y", y)):
        if not isinstance(v, torch.Tensor) or v.dim() < 2 or v.shape[0] < 1:
            raise ValueError(f"{owner}: {name} must be a tensor (N, ...) with N >= 1, got "
                             f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"{owner}: x and y must have the same sample shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return x.detach().flatten(1).double(), y.detach().flatten(1).to(x.device).double()


def wasserstein2_1d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact W2^2 between empirical distributions along dim 0: a (N, P), b (M, P) -> (P,)."""
    N, M = a.shape[0], b.shape[0]
    a, b = a.sort(dim=0).values, b.sort(dim=0).values
    if N == M:
        return ((a - b) ** 2).mean(0)
    levels = torch.cat([torch.arange(1, N + 1, device=a.device) / N, torch.arange(1, M + 1, device=a.device) / M])
    levels = levels.double().sort().values  # (N + M,) the breakpoints of both quantile functions
    width = torch.diff(levels, prepend=levels.new_zeros(1))
    mid = levels - width / 2  # inside each interval both quantile functions are constant
    ia = (mid * N).floor().long().clamp(max=N - 1)
    ib = (mid * M).floor().long().clamp(max=M - 1)
    return (width[:, None] * (a[ia] - b[ib]) ** 2).sum(0)  # (N + M, P) -> (P,)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, *, n_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """SW2 between samples x (N, ...) and y (M, ...): sqrt(mean_theta W2^2(x.theta, y.theta))."""
    if not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"sliced_wasserstein: n_projections must be a positive int, got {n_projections!r}")
    x, y = _pair(x, y, "sliced_wasserstein")
    g = _generator(generator, x.device)
    theta = torch.randn(x.shape[1], n_projections, generator=g, device=x.device, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)  # (D, P) unit columns, uniform on the sphere
    return wasserstein2_1d(x @ theta, y @ theta).mean().sqrt().item()  # (N, D) @ (D, P) -> (N, P)


def _mean_pairwise(a: torch.Tensor, b: torch.Tensor, fn, chunk: int = 2048) -> torch.Tensor:
    """sum over all pairs of fn(|a_i - b_j|^2), computed in row chunks (N x M never held at once)."""
    total = a.new_zeros(())
    for i in range(0, a.shape[0], chunk):
        d2 = torch.cdist(a[i:i + chunk], b).pow(2)  # (chunk, M)
        total = total + fn(d2).sum()
    return total


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance (V-statistic) 2 E|X-Y| - E|X-X'| - E|Y-Y'| of x (N, ...) and y (M, ...)."""
    x, y = _pair(x, y, "energy_distance")
    N, M = x.shape[0], y.shape[0]

    def dist(d2: torch.Tensor) -> torch.Tensor:
        return d2.clamp_min(0).sqrt()

    xy = _mean_pairwise(x, y, dist) / (N * M)
    xx = _mean_pairwise(x, x, dist) / (N * N)
    yy = _mean_pairwise(y, y, dist) / (M * M)
    return (2 * xy - xx - yy).item()


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] = (0.1, 0.5, 1.0)) -> float:
    """Unbiased MMD^2 of x (N, ...) and y (M, ...), N, M >= 2, kernel mean_h exp(-|a-b|^2 / (2 h^2))."""
    bw = tuple(float(h) for h in bandwidths) if isinstance(bandwidths, (tuple, list)) else ()
    if not bw or any(h <= 0 for h in bw):
        raise ValueError(f"mmd_rbf: bandwidths must be a non-empty sequence of positive numbers, got {bandwidths!r}")
    x, y = _pair(x, y, "mmd_rbf")
    N, M = x.shape[0], y.shape[0]
    if N < 2 or M < 2:
        raise ValueError(f"mmd_rbf: the unbiased estimator needs at least 2 samples each, got N={N}, M={M}")

    def k(d2: torch.Tensor) -> torch.Tensor:
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bw) / len(bw)

    kxx = (_mean_pairwise(x, x, k) - N) / (N * (N - 1))  # k(a, a) = 1: drop the diagonal
    kyy = (_mean_pairwise(y, y, k) - M) / (M * (M - 1))
    kxy = _mean_pairwise(x, y, k) / (N * M)
    return (kxx + kyy - 2 * kxy).item()


def mode_weights(samples: torch.Tensor, means: torch.Tensor, *, radius: float | None = None) -> torch.Tensor:
    """Fraction of samples (N, D) whose nearest mode among means (K, D) is k: (K,).

    With radius, a sample farther than radius from its nearest mode is an outlier and counts
    for no mode, so the weights sum to 1 - (fraction of outliers). A non-finite sample (a
    diverged sampler's NaN) is always an outlier.
    """
    if samples.dim() != 2 or means.dim() != 2 or samples.shape[1] != means.shape[1] or samples.shape[0] < 1:
        raise ValueError(f"mode_weights: samples must be (N, D) with N >= 1 and means (K, D), got "
                         f"{tuple(samples.shape)} and {tuple(means.shape)}")
    if radius is not None and not radius > 0:
        raise ValueError(f"mode_weights: radius must be positive or None, got {radius!r}")
    d = torch.cdist(samples.double(), means.to(samples.device).double())  # (N, K)
    dmin, k = d.min(dim=1)
    keep = torch.isfinite(dmin) if radius is None else dmin <= radius  # NaN <= radius is False
    counts = torch.bincount(k[keep], minlength=means.shape[0]).double()
    return counts / samples.shape[0]


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) for mu (D,), cov (D, D).

    tr (S1 S2)^{1/2} is the sum of the singular values of S1^{1/2} S2^{1/2} (its eigenvalues are
    those of S1^{1/2} S2 S1^{1/2} = A A^T, A = S1^{1/2} S2^{1/2}): symmetric square roots by eigh and
    an SVD, with no complex parts (scipy's sqrtm of S1 S2) and no square roots of rounding errors
    (eigenvalues of A A^T), so identical singular covariances give 0 to about 1e-13.
    """
    mu1, mu2, cov1, cov2 = (torch.as_tensor(v).double() for v in (mu1, mu2, cov1, cov2))
    D = mu1.shape[0] if mu1.dim() == 1 else -1
    if mu1.dim() != 1 or mu2.shape != (D,) or cov1.shape != (D, D) or cov2.shape != (D, D):
        raise ValueError(f"frechet_distance: expected mu1, mu2 (D,) and cov1, cov2 (D, D), got {tuple(mu1.shape)}, "
                         f"{tuple(cov1.shape)}, {tuple(mu2.shape)}, {tuple(cov2.shape)}")
    cross = torch.linalg.svdvals(_sqrt_psd(cov1) @ _sqrt_psd(cov2)).sum()  # tr (S1 S2)^{1/2}
    return ((mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * cross).item()


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """features (N, F), N >= 2 -> (mean (F,), unbiased covariance (F, F)), float64."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"feature_stats: features must be (N, F) with N >= 2, got {tuple(features.shape)}")
    f = features.detach().double()
    return f.mean(0), torch.cov(f.T)


class DigitsFeatures(nn.Module):
    """A digits classifier whose penultimate layer is the feature space of digits_fd.

    (N, 1, 8, 8) in [0, 1] -> logits (N, 10); features(x) -> (N, feature_dim) (after the ReLU).
    An MLP 64 -> hidden -> feature_dim -> 10; save and load it with state_dict().
    """

    def __init__(self, hidden: int = 128, feature_dim: int = 64, generator: torch.Generator | None = None):
        super().__init__()
        for name, v in (("hidden", hidden), ("feature_dim", feature_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"DigitsFeatures: {name} must be a positive int, got {v!r}")
        with rng_scope(generator) if generator is not None else contextlib.nullcontext():
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, feature_dim),
                                      nn.ReLU())
            self.head = nn.Linear(feature_dim, 10)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"DigitsFeatures: x must be (N, 1, 8, 8) images in [0, 1], got {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.body(x)  # (N, 1, 8, 8) -> (N, 64) -> (N, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Fraction of x (N, 1, 8, 8) classified as their labels y (N,)."""
        return (self(x).argmax(-1) == y).double().mean().item()


def fit_digits_features(model: DigitsFeatures, *, steps: int = 600, batch_size: int = 128, lr: float = 3e-3,
                        test_fraction: float = 0.2, seed: int = 0,
                        generator: torch.Generator | None = None) -> dict:
    """Trains model in place with Adam on digits_data(split="train") and returns its train/test accuracies.

    The test split (test_fraction, seed) is never trained on; minibatches come from generator.
    """
    from ..optim import Adam
    from .data import digits_data

    g = _generator(generator, torch.device("cpu"))
    x, y = digits_data(split="train", test_fraction=test_fraction, seed=seed)
    opt = Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (batch_size,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    x_test, y_test = digits_data(split="test", test_fraction=test_fraction, seed=seed)
    return {"steps": steps, "train_accuracy": model.accuracy(x, y), "test_accuracy": model.accuracy(x_test, y_test)}


def train_digits_features(*, steps: int = 600, generator: torch.Generator | None = None, **kw) -> DigitsFeatures:
    """A DigitsFeatures built and trained from generator (about a second on one CPU core).

    The dict fit_digits_features returns (train and held-out accuracy) is kept as ``model.fit_info``.
    """
    g = _generator(generator, torch.device("cpu"))
    model = DigitsFeatures(generator=g)
    model.fit_info = fit_digits_features(model, steps=steps, generator=g, **kw)
    return model


@torch.no_grad()
def digits_fd(samples: torch.Tensor, reference: torch.Tensor, features: DigitsFeatures) -> float:
    """Frechet distance between samples (N, 1, 8, 8) and reference (M, 1, 8, 8) in features' feature space."""
    was_training = features.training
    features.eval()
    try:
        mu1, cov1 = feature_stats(features.features(samples.float()))
        mu2, cov2 = feature_stats(features.features(reference.float()))
    finally:
        features.train(was_training)
    return frechet_distance(mu1, cov1, mu2, cov2)
