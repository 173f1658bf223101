"""ODE log-likelihoods and bits/dim bookkeeping (references/score_sde.md, sections 1 and 6.5, 6.8)."""
import math

import pytest
import torch

from deepnotes.diffusion import (
    VESDE,
    VPSDE,
    GaussianMixture,
    SubVPSDE,
    bits_per_dim,
    dequantization_offset,
    log_likelihood,
)
from deepnotes.diffusion.likelihood import dequantize, divergence

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def gaussian(event, s=0.5):
    """N(0, s² I) as a one-component mixture, so its noised score is exact."""
    return GaussianMixture(torch.zeros(1, *event, dtype=F64), torch.tensor([s], dtype=F64))


def test_vp_ode_likelihood_of_gaussian_data_within_1e3_nats():
    gm, sde = gaussian((2,)), VPSDE()
    x = gm.sample(8, generator=gen(0))
    log_p, nfe = log_likelihood(sde, gm.score_fn(sde), x, generator=gen(1))
    want = torch.distributions.Normal(0.0, 0.5).log_prob(x).sum(1)  # the data density itself
    assert log_p.shape == (8,) and log_p.dtype == F64
    assert (log_p - want).abs().max() < 1e-3
    assert 20 < nfe < 200


@pytest.mark.parametrize("cls", [VESDE, SubVPSDE])
def test_ode_likelihood_is_the_density_at_eps_for_any_shape(cls):
    gm, sde, eps = gaussian((1, 2, 2)), cls(), 1e-5
    x = gm.sample(4, generator=gen(2))
    log_p, _ = log_likelihood(sde, gm.score_fn(sde), x, eps=eps, generator=gen(3))
    # p_eps is the data blurred by σ_eps (σmin for VE): 4e-4 nats away from p_0 here
    assert (log_p - gm.noised(eps, sde).log_prob(x)).abs().max() < 1e-3


def test_mixture_likelihood_with_exact_trace():
    angle = torch.arange(8, dtype=F64) * math.pi / 4
    gm = GaussianMixture(4 * torch.stack([angle.cos(), angle.sin()], 1) / 1.414, 0.5 / 1.414)
    sde = VPSDE()
    x = gm.sample(6, generator=gen(4))
    log_p, _ = log_likelihood(sde, gm.score_fn(sde), x, estimator="exact")
    assert (log_p - gm.noised(1e-5, sde).log_prob(x)).abs().max() < 1e-3


def test_nfe_equals_counted_score_calls():
    gm, sde = gaussian((3,)), VESDE()
    calls = []

    def score_fn(x, t):
        calls.append(1)
        return gm.score(x, t, sde)

    _, nfe = log_likelihood(sde, score_fn, gm.sample(3, generator=gen(5)), rtol=1e-3, atol=1e-3, generator=gen(6))
    assert nfe == len(calls) > 0


def test_rademacher_is_exact_for_a_diagonal_jacobian():
    x = torch.randn(5, 3, generator=gen(7), dtype=F64)
    fn = lambda z: -z ** 3 - torch.tanh(z)
    _, exact = divergence(fn, x)
    torch.testing.assert_close(exact, (-3 * x ** 2 - 1 + torch.tanh(x) ** 2).sum(1))
    for seed in range(3):
        eps = torch.randint(0, 2, x.shape, generator=gen(seed)).to(F64) * 2 - 1
        torch.testing.assert_close(divergence(fn, x, eps)[1], exact)
    # through the whole solve: Rademacher equals the exact trace, Gaussian noise does not
    score = lambda z, t: -z - torch.tanh(z)
    sde = VPSDE()
    runs = {e: log_likelihood(sde, score, x, estimator=e, generator=gen(8))[0]
            for e in ("rademacher", "exact", "gaussian")}
    torch.testing.assert_close(runs["rademacher"], runs["exact"], rtol=0, atol=1e-9)
    assert (runs["gaussian"] - runs["exact"]).abs().max() > 1e-3


def test_gaussian_hutchinson_is_unbiased_for_a_full_jacobian():
    A = torch.randn(4, 4, generator=gen(9), dtype=F64)
    x = torch.randn(20000, 4, generator=gen(10), dtype=F64)  # one vjp for 20000 independent draws
    noise = torch.randn(x.shape, generator=gen(11), dtype=F64)
    _, est = divergence(lambda z: z @ A.T, x, noise)
    assert abs(est.mean() - A.trace()) < 3 * est.std() / math.sqrt(len(est))
    torch.testing.assert_close(divergence(lambda z: z @ A.T, x[:2])[1], A.trace().expand(2))


def test_fixed_noise_makes_the_estimate_deterministic():
    gm, sde = gaussian((2,)), VPSDE()
    x = gm.sample(2, generator=gen(12))
    a = log_likelihood(sde, gm.score_fn(sde), x, estimator="gaussian", generator=gen(13))
    b = log_likelihood(sde, gm.score_fn(sde), x, estimator="gaussian", generator=gen(13))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


# --- bits per dimension -------------------------------------------------------------

def test_dequantization_offsets():
    assert dequantization_offset(256) == 8.0
    assert dequantization_offset(256, (-1.0, 1.0)) == 7.0
    assert abs(dequantization_offset(17) - math.log2(17)) < 1e-12 and abs(dequantization_offset(17) - 4.09) < 5e-3


def test_uniform_density_gives_the_offset_in_bits_per_dim():
    D = 3 * 8 * 8
    # uniform on [0, 1]^D: log p = 0, so bpd = log2(256) = 8
    assert bits_per_dim(torch.zeros(4), D, dequantization_offset(256)).eq(8.0).all()
    # the same data on [-1, 1]^D: density 2^-D, offset 7 -- the same 8 bits/dim
    log_p = torch.full((4,), -D * math.log(2.0))
    torch.testing.assert_close(bits_per_dim(log_p, (3, 8, 8), dequantization_offset(256, (-1, 1))),
                               torch.full((4,), 8.0))


def test_dequantize_keeps_each_level_in_its_own_cell():
    levels = 17
    k = torch.arange(levels, dtype=F64).repeat(50)
    for low, high in ((0.0, 1.0), (-1.0, 1.0)):
        x = low + (high - low) * k / (levels - 1)
        y = dequantize(x.view(-1, 1), levels, (low, high), generator=gen(14)).view(-1)
        cell = torch.floor((y - low) / (high - low) * levels)
        assert torch.equal(cell, k) and y.min() >= low and y.max() <= high


def test_bad_arguments_raise_value_error_naming_them():
    gm, sde = gaussian((2,)), VPSDE()
    fn = gm.score_fn(sde)
    x = torch.zeros(2, 2, dtype=F64)
    for kw, message in (({"estimator": "hutch"}, "estimator must be one of"), ({"eps": 0.0}, "eps must lie"),
                        ({"rtol": 0.0}, "rtol and atol")):
        with pytest.raises(ValueError, match=message):
            log_likelihood(sde, fn, x, **kw)
    with pytest.raises(ValueError, match=r"\bx must be \(B"):
        log_likelihood(sde, fn, torch.tensor(0.0))
    with pytest.raises(ValueError, match="score_fn must be differentiable"):
        log_likelihood(sde, lambda y, t: fn(y, t).detach(), x)
    with pytest.raises(ValueError, match="levels must"):
        dequantization_offset(1)
    with pytest.raises(ValueError, match="data_range"):
        dequantization_offset(256, (1.0, 0.0))
    with pytest.raises(ValueError, match="dims must"):
        bits_per_dim(torch.zeros(2), 0, 8.0)
