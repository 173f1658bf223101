"""GaussianMixture: density against torch.distributions, exact noised score against autograd."""
import math

import pytest
import torch
from torch import distributions as D

from deepnotes.diffusion import VESDE, VPSDE, GaussianMixture, SubVPSDE

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def random_mixture(event=(3,), K=4, seed=0):
    g = gen(seed)
    means = 2 * torch.randn(K, *event, generator=g, dtype=F64)
    stds = 0.3 + torch.rand(K, generator=g, dtype=F64)
    weights = torch.rand(K, generator=g, dtype=F64) + 0.1
    return GaussianMixture(means, stds, weights)


def torch_mixture(gm):
    K = len(gm.weights)
    comp = D.Independent(D.Normal(gm.means.reshape(K, -1), gm.stds[:, None].expand(K, gm.dim)), 1)
    return D.MixtureSameFamily(D.Categorical(probs=gm.weights), comp)


@pytest.mark.parametrize("event", [(2,), (1, 2, 3)])
def test_log_prob_matches_torch_distributions(event):
    gm = random_mixture(event)
    x = 2 * torch.randn(50, *event, generator=gen(1), dtype=F64)
    torch.testing.assert_close(gm.log_prob(x), torch_mixture(gm).log_prob(x.reshape(50, -1)))
    torch.testing.assert_close(gm.weights.sum(), torch.tensor(1.0, dtype=F64))


def test_sample_moments_and_weights():
    means = torch.tensor([[-4.0, 0.0], [4.0, 0.0]], dtype=F64)
    gm = GaussianMixture(means, torch.tensor([0.5, 1.0], dtype=F64), torch.tensor([3.0, 1.0], dtype=F64))
    n = 40000
    x = gm.sample(n, generator=gen(2))
    assert x.shape == (n, 2) and x.dtype == F64
    right = x[:, 0] > 0
    frac = right.double().mean().item()
    assert abs(frac - 0.25) < 3 * math.sqrt(0.25 * 0.75 / n)
    left_dev, right_dev = x[~right] - means[0], x[right] - means[1]
    assert abs(left_dev.pow(2).mean().sqrt().item() - 0.5) < 0.01
    assert abs(right_dev.pow(2).mean().sqrt().item() - 1.0) < 0.02
    assert torch.equal(gm.sample(5, generator=gen(3)), gm.sample(5, generator=gen(3)))


@pytest.mark.parametrize("cls", [VESDE, VPSDE, SubVPSDE])
@pytest.mark.parametrize("event", [(2,), (1, 2, 2)])
def test_score_is_the_gradient_of_the_noised_log_density(cls, event):
    sde, gm = cls(), random_mixture(event, seed=4)
    x = 3 * torch.randn(6, *event, generator=gen(5), dtype=F64)
    for t in (0.0, 0.01, 0.3, 1.0):
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(gm.noised(t, sde).log_prob(xg).sum(), xg)
        torch.testing.assert_close(gm.score(x, t, sde), grad)


def test_score_takes_a_time_per_sample():
    sde, gm = VPSDE(), random_mixture((2,), seed=6)
    x = torch.randn(4, 2, generator=gen(7), dtype=F64)
    t = torch.tensor([0.01, 0.2, 0.6, 0.95], dtype=F64)
    want = torch.cat([gm.score(x[i:i + 1], float(t[i]), sde) for i in range(4)])
    torch.testing.assert_close(gm.score(x, t, sde), want)


def test_noised_parameters_and_identity_at_t0_for_vp():
    sde, gm = VPSDE(), random_mixture((3,), seed=8)
    alpha, sigma = (v.item() for v in sde.alpha_sigma(0.4))
    noised = gm.noised(0.4, sde)
    torch.testing.assert_close(noised.means, alpha * gm.means)
    torch.testing.assert_close(noised.stds, (alpha ** 2 * gm.stds ** 2 + sigma ** 2).sqrt())
    torch.testing.assert_close(noised.weights, gm.weights)
    x = torch.randn(5, 3, generator=gen(9), dtype=F64)
    torch.testing.assert_close(gm.noised(0.0, sde).log_prob(x), gm.log_prob(x))  # VP: σ_0 = 0


def test_noised_mixture_is_the_law_of_the_perturbed_samples():
    sde, gm = VESDE(sigma_max=5.0), random_mixture((2,), seed=10)
    n, t = 40000, 0.6
    x0 = gm.sample(n, generator=gen(11))
    mean, std = sde.marginal_prob(x0, t)
    xt = mean + std[:, None] * torch.randn(x0.shape, generator=gen(12), dtype=F64)
    noised = gm.noised(t, sde)
    # E[log p_t(x_t)] by samples from the two constructions agree within their standard errors
    a, b = noised.log_prob(xt), noised.log_prob(noised.sample(n, generator=gen(13)))
    assert abs(a.mean() - b.mean()) < 3 * math.sqrt((a.var() + b.var()) / n)


def test_score_is_finite_and_exact_far_from_every_mode():
    sde, gm = VPSDE(), random_mixture((2,), seed=14)
    x = torch.tensor([[1e3, -1e3]], dtype=F64)
    s = gm.score(x, 1e-3, sde)
    alpha, sigma = (v.item() for v in sde.alpha_sigma(1e-3))
    var = alpha ** 2 * gm.stds ** 2 + sigma ** 2
    # far away the component with the largest variance owns all the mass
    k = int(var.argmax())
    torch.testing.assert_close(s, -(x - alpha * gm.means[k]) / var[k])


def test_float32_inputs_give_float32_scores():
    gm = random_mixture((2,), seed=15)
    x = torch.randn(3, 2, generator=gen(16))
    assert gm.score(x, 0.5, VPSDE()).dtype == torch.float32
    assert gm.score_fn(VPSDE())(x, torch.full((3,), 0.5)).shape == (3, 2)


def test_bad_arguments_raise_value_error_naming_them():
    means = torch.zeros(3, 2)
    cases = [(lambda: GaussianMixture(torch.zeros(3), 1.0), "means"),
             (lambda: GaussianMixture(means, torch.tensor([1.0, 1.0])), "stds"),
             (lambda: GaussianMixture(means, torch.tensor([1.0, -1.0, 1.0])), "stds"),
             (lambda: GaussianMixture(means, 1.0, torch.tensor([1.0, -1.0, 1.0])), "weights"),
             (lambda: GaussianMixture(means, 1.0, torch.zeros(3)), "weights"),
             (lambda: GaussianMixture(means, 1.0).sample(0), "n must"),
             (lambda: GaussianMixture(means, 1.0).log_prob(torch.zeros(4, 3)), r"x must be \(B, \*\(2,\)\)"),
             (lambda: GaussianMixture(means, 1.0).score(torch.zeros(4, 2), 1.5, VPSDE()), r"\bt must lie")]
    for make, name in cases:
        with pytest.raises(ValueError, match=name):
            make()
