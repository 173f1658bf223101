"""DDPM against the reference facts (references/score_sde.md, sections 1 and 6) and closed forms."""
import math

import pytest
import torch

from deepnotes.diffusion import (
    DDPM,
    VPSDE,
    GaussianMixture,
    SubVPSDE,
    eps_to_score,
    score_to_eps,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def continuous_sqrt_alpha_bar_1(beta_0=0.1, beta_1=20.0):
    return math.exp(-0.25 * (beta_1 - beta_0) - 0.5 * beta_0)


def test_sqrt_alpha_bar_discrete_vs_continuous():
    assert DDPM().sqrt_alpha_bars[-1].item() == pytest.approx(0.006353, abs=5e-7)
    assert continuous_sqrt_alpha_bar_1() == pytest.approx(0.006572, abs=5e-7)
    mean_coef = VPSDE().marginal_prob(torch.ones(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))[0]
    assert mean_coef.item() == pytest.approx(continuous_sqrt_alpha_bar_1(), rel=1e-6)
    gaps = [abs(DDPM(N=N).sqrt_alpha_bars[-1].item() - continuous_sqrt_alpha_bar_1()) for N in (100, 1000, 10000)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[1] / gaps[2] == pytest.approx(10, rel=0.1)  # first order in 1/N


def test_ho_schedule_is_the_vp_discretisation():
    ho = DDPM(betas=torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    vp = DDPM(beta_min=0.1, beta_max=20.0, N=1000)
    assert ho.N == vp.N == 1000
    assert torch.allclose(ho.alpha_bars, vp.alpha_bars, rtol=1e-12, atol=0)


def test_schedule_tables():
    d = DDPM(N=50)
    assert torch.allclose(d.alpha_bars, torch.cumprod(1 - d.betas, 0))
    assert d.posterior_variance[0].item() == 0.0  # ᾱ_{−1} = 1: nothing left to add at the last step
    i = 10
    expected = d.betas[i] * (1 - d.alpha_bars[i - 1]) / (1 - d.alpha_bars[i])
    assert d.posterior_variance[i].item() == pytest.approx(expected.item())


def test_q_sample():
    d = DDPM()
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    noise = torch.randn_like(x0)
    i = torch.tensor([0, 499, 999])
    out = d.q_sample(x0, i, noise)
    for b in range(3):
        ab = d.alpha_bars[i[b]]
        assert torch.allclose(out[b], ab.sqrt() * x0[b] + (1 - ab).sqrt() * noise[b])
    assert torch.allclose(d.q_sample(x0, 7, noise), d.q_sample(x0, torch.full((3,), 7), noise))


@pytest.mark.parametrize("sde_cls", [VPSDE, SubVPSDE])
def test_eps_score_round_trip(sde_cls):
    sde = sde_cls()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.99 + 0.01
    W = torch.randn(3, 3, generator=g, dtype=torch.float64)
    score_fn = lambda y, s: torch.tanh(y @ W) * (1 + s[:, None])
    back = eps_to_score(score_to_eps(score_fn, sde), sde)
    assert torch.allclose(back(x, t), score_fn(x, t), rtol=1e-12)
    eps_model = lambda y, label: torch.sin(y @ W + label[:, None] / 999)
    labels = t * 999
    assert torch.allclose(score_to_eps(eps_to_score(eps_model, sde), sde)(x, labels), eps_model(x, labels), rtol=1e-12)


def test_eps_to_score_label_convention():
    sde, seen = VPSDE(), []

    def eps_model(x, label):
        seen.append(label)
        return torch.ones_like(x)

    t = torch.tensor([0.5, 1.0], dtype=torch.float64)
    s = eps_to_score(eps_model, sde)(torch.zeros(2, 2, dtype=torch.float64), t)
    assert torch.allclose(seen[0], torch.tensor([499.5, 999.0], dtype=torch.float64))  # score_sde's 999t
    assert s[0, 0].item() == pytest.approx(-1 / 0.9597, abs=1e-4)  # reference: VP std at t=0.5 is 0.9597


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ancestral_sampling_with_exact_mixture_score(variance):
    mixture = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=torch.float64),
                              torch.tensor([0.5, 0.8], dtype=torch.float64),
                              torch.tensor([0.3, 0.7], dtype=torch.float64))
    sde = VPSDE()
    eps_model = score_to_eps(lambda x, t: mixture.score(x, t, sde), sde)
    g = torch.Generator().manual_seed(1)
    out = DDPM().sample(eps_model, (4000, 2), generator=g, variance=variance, dtype=torch.float64)
    assert out.nfe == 1000 and out.x.shape == (4000, 2)
    data_logp = mixture.log_prob(mixture.sample(100000, generator=g)).mean().item()
    assert mixture.log_prob(out.x).mean().item() == pytest.approx(data_logp, abs=0.05)


def test_sampler_calls_with_index_labels():
    labels = []

    def eps_model(x, label):
        labels.append(label[0].item())
        return torch.zeros_like(x)

    out = DDPM(betas=torch.linspace(0.1, 0.5, 5)).sample(eps_model, (2, 3, 4), generator=torch.Generator().manual_seed(2))
    assert labels == [4.0, 3.0, 2.0, 1.0, 0.0] and out.nfe == 5 and out.x.shape == (2, 3, 4)


def test_bad_input():
    with pytest.raises(ValueError, match="betas"):
        DDPM(betas=torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="N"):
        DDPM(N=0)
    with pytest.raises(ValueError, match="betas"):  # β_max/N = 2
        DDPM(N=10)
    d = DDPM(N=100)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="i"):
        d.q_sample(x, torch.tensor([0, 100]), x)
    with pytest.raises(ValueError, match="i"):
        d.q_sample(x, torch.tensor([0, 1, 2]), x)
    with pytest.raises(ValueError, match="noise"):
        d.q_sample(x, 0, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="variance"):
        d.sample(lambda y, i: y, (2, 3), variance="fixed_large")
    with pytest.raises(ValueError, match="eps_model"):
        d.sample(lambda y, i: y[:, 0], (2, 3))
    with pytest.raises(ValueError, match="shape"):
        d.sample(lambda y, i: y, (0, 3))
    with pytest.raises(ValueError, match="N"):
        eps_to_score(lambda y, i: y, VPSDE(), N=1)
