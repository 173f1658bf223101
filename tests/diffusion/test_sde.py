"""VESDE / VPSDE / SubVPSDE against score_sde's closed forms (references/score_sde.md, sections 1 and 6)."""
import math

import pytest
import torch

from deepnotes.diffusion import SDE, VESDE, VPSDE, SubVPSDE
from deepnotes.diffusion.sde import bview

pytestmark = pytest.mark.usefixtures("one_thread")
SDES = [VESDE, VPSDE, SubVPSDE]
F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --- closed-form values (section 1) -------------------------------------------------

def test_vp_marginal_reference_values():
    alpha, sigma = VPSDE().alpha_sigma(0.5)
    assert abs(alpha.item() - 0.2812) < 5e-5 and abs(sigma.item() - 0.9597) < 5e-5
    alpha, sigma = VPSDE().alpha_sigma(1.0)
    assert abs(alpha.item() - 0.00657) < 5e-6 and abs(sigma.item() - 0.99998) < 5e-6


def test_subvp_std_reference_value_and_shared_mean():
    alpha, sigma = SubVPSDE().alpha_sigma(0.5)
    assert abs(sigma.item() - 0.9209) < 5e-5
    assert abs(alpha.item() - 0.2812) < 5e-5


def test_marginal_prob_broadcasts_over_any_data_shape():
    x0 = torch.randn(3, 2, 4, 5, generator=gen(0), dtype=F64)
    t = torch.tensor([0.1, 0.5, 1.0], dtype=F64)
    for cls in SDES:
        sde = cls()
        mean, std = sde.marginal_prob(x0, t)
        alpha, sigma = sde.alpha_sigma(t)
        assert mean.shape == x0.shape and std.shape == (3,)
        torch.testing.assert_close(mean, alpha.view(3, 1, 1, 1) * x0)
        torch.testing.assert_close(std, sigma)
        # a float, a 0-d tensor and a (B,) tensor of the same time agree
        for t_same in (0.5, torch.tensor(0.5, dtype=F64), torch.full((3,), 0.5, dtype=F64)):
            torch.testing.assert_close(sde.marginal_prob(x0, t_same)[1], sde.alpha_sigma(0.5)[1].expand(3))


def test_ve_marginal_std_is_sigma_t_and_forward_std_subtracts_sigma_min():
    sde = VESDE()
    t = torch.tensor([1e-5, 0.5, 1.0], dtype=F64)
    sigma = 0.01 * 5000.0 ** t
    torch.testing.assert_close(sde.marginal_prob(torch.zeros(3, 2, dtype=F64), t)[1], sigma)
    torch.testing.assert_close(sde.forward_std(t), (sigma ** 2 - 0.01 ** 2).sqrt())
    assert abs(sde.forward_std(1e-5).item() - 1.3e-4) < 5e-6  # not 0.0100 (the Monte-Carlo trap)


def test_sde_coefficients_match_formulas():
    x = torch.randn(4, 3, generator=gen(1), dtype=F64)
    t = torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=F64)
    drift, g = VESDE().sde(x, t)
    torch.testing.assert_close(drift, torch.zeros_like(x))
    torch.testing.assert_close(g, 0.01 * 5000.0 ** t * math.sqrt(2 * math.log(5000.0)))
    beta = 0.1 + t * 19.9
    drift, g = VPSDE().sde(x, t)
    torch.testing.assert_close(drift, -0.5 * beta[:, None] * x)
    torch.testing.assert_close(g, beta.sqrt())
    drift, g = SubVPSDE().sde(x, t)
    torch.testing.assert_close(drift, -0.5 * beta[:, None] * x)
    torch.testing.assert_close(g, (beta * (1 - torch.exp(-0.2 * t - 19.9 * t ** 2))).sqrt())


# --- fine-step Monte-Carlo of the forward SDE (section 6.1) --------------------------

def simulate_forward(sde, x0, t_end, n_paths, n_steps, generator):
    """Euler–Maruyama from t = 0 with coefficients at each interval's midpoint."""
    x = x0.expand(n_paths, -1).clone()
    dt = t_end / n_steps
    for k in range(n_steps):
        drift, g = sde.sde(x, (k + 0.5) * dt)
        x = x + drift * dt + bview(g, x) * math.sqrt(dt) * torch.randn(x.shape, generator=generator, dtype=F64)
    return x


@pytest.mark.parametrize("cls, t_end", [(VPSDE, 0.5), (SubVPSDE, 0.5), (VESDE, 0.1), (VESDE, 1.0)])
def test_forward_sde_monte_carlo_matches_marginal(cls, t_end):
    sde, n = cls(), 20000
    x0 = torch.tensor([[1.5, -0.5]], dtype=F64)
    x = simulate_forward(sde, x0, t_end, n, 400, gen(2))
    mean, _ = sde.marginal_prob(x0, t_end)
    std = sde.forward_std(t_end).item()  # VE: √(σ² − σmin²); VP, subVP: σ_t
    se_mean, se_std = std / math.sqrt(n), std / math.sqrt(2 * n)
    assert ((x.mean(0) - mean[0]).abs() < 3 * se_mean).all()
    assert ((x.std(0) - std).abs() < 3 * se_std).all()
    if cls is VESDE:  # the marginal_prob convention σ(t) is rejected by the same data at small t
        sigma_t = sde.marginal_prob(x0, t_end)[1].item()
        assert t_end > 0.5 or ((x.std(0) - sigma_t).abs() > 10 * se_std).all()


# --- discretisations (section 6.2) --------------------------------------------------

def test_ddpm_product_via_discretize_and_continuous_value():
    sde = VPSDE()
    x = torch.ones(1, dtype=F64)
    for t in torch.linspace(1.0, 1e-3, sde.N, dtype=F64):  # visits DDPM levels N-1, ..., 0
        f, _ = sde.discretize(x, t)
        x = x + f
    assert abs(x.item() - 0.006353) < 1e-6
    assert abs(sde.alphas_cumprod[-1].sqrt().item() - 0.006353) < 1e-6
    assert abs(sde.alpha_sigma(1.0)[0].item() - 0.006572) < 1e-6


def test_ve_discretization_variances_sum_to_sigma_max_squared():
    sde = VESDE()
    x = torch.zeros(1, dtype=F64)
    ts = torch.linspace(1.0, 1e-5, sde.N, dtype=F64)
    assert len({int(sde.index(t.view(1))) for t in ts}) == sde.N  # every level once
    total = sum(sde.discretize(x, t)[1] ** 2 for t in ts)
    assert abs(total.item() - 50.0 ** 2) < 1e-8


def test_subvp_discretize_is_euler_maruyama():
    sde = SubVPSDE(N=100)
    x = torch.randn(2, 3, generator=gen(3), dtype=F64)
    drift, g = sde.sde(x, 0.4)
    f, G = sde.discretize(x, 0.4)
    torch.testing.assert_close(f, drift / 100)
    torch.testing.assert_close(G, g / 10)


def test_with_N_keeps_parameters():
    assert repr(VESDE(0.1, 20.0, 7).with_N(30)) == "VESDE(sigma_min=0.1, sigma_max=20.0, N=30)"
    sde = SubVPSDE(0.2, 10.0, 50).with_N(20)
    assert isinstance(sde, SubVPSDE) and (sde.beta_0, sde.beta_1, sde.N) == (0.2, 10.0, 20)


# --- prior (section 6.3) ------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 2), (5, 3, 32, 32), (5, 3072)])
def test_prior_logp_reference_values(shape):
    z = torch.zeros(shape)
    want = {2: (-1.8379, -9.6619), 3072: (-2822.98, -14840.71)}[math.prod(shape[1:])]
    for sde, value in ((VPSDE(), want[0]), (SubVPSDE(), want[0]), (VESDE(), want[1])):
        got = sde.prior_logp(z)
        assert got.shape == (5,)
        assert (got - value).abs().max() < (5e-5 if shape == (5, 2) else 5e-3)  # digits given


def test_prior_logp_matches_torch_normal_and_prior_sampling():
    for sde, s in ((VPSDE(), 1.0), (VESDE(), 50.0)):
        z = sde.prior_sampling((4000, 3, 2), generator=gen(4), dtype=F64)
        assert z.shape == (4000, 3, 2) and abs(z.std().item() / s - 1) < 0.03
        want = torch.distributions.Normal(0.0, s).log_prob(z).sum((1, 2))
        torch.testing.assert_close(sde.prior_logp(z), want)
    a = VPSDE().prior_sampling((3, 2), generator=gen(5))
    b = VPSDE().prior_sampling((3, 2), generator=gen(5))
    assert torch.equal(a, b)


# --- reverse SDE / probability flow -------------------------------------------------

@pytest.mark.parametrize("cls", SDES)
def test_reverse_drift_and_probability_flow(cls):
    sde = cls(N=50)
    x = torch.randn(3, 2, 2, generator=gen(6), dtype=F64)
    t = torch.tensor([0.9, 0.5, 0.1], dtype=F64)
    score = lambda x_, t_: -x_ * (1 + t_.view(-1, 1, 1))
    f, g = sde.sde(x, t)
    s = score(x, t)
    drift, diffusion = sde.reverse(score).sde(x, t)
    torch.testing.assert_close(drift, f - bview(g ** 2, x) * s)
    torch.testing.assert_close(diffusion, g)
    drift, diffusion = sde.reverse(score, probability_flow=True).sde(x, t)
    torch.testing.assert_close(drift, f - 0.5 * bview(g ** 2, x) * s)
    assert torch.equal(diffusion, torch.zeros_like(g))
    fd, G = sde.discretize(x, t)
    rf, rG = sde.reverse(score).discretize(x, t)
    torch.testing.assert_close(rf, fd - bview(G ** 2, x) * s)
    torch.testing.assert_close(rG, G)


@pytest.mark.parametrize("cls", SDES)
def test_half_log_snr_inverse_round_trips(cls):
    sde = cls()
    t = torch.tensor([1e-5, 1e-3, 0.3, 0.7, 1.0], dtype=F64)
    torch.testing.assert_close(sde.inverse_half_log_snr(sde.half_log_snr(t)), t, rtol=1e-9, atol=1e-12)


# --- bad input ----------------------------------------------------------------------

@pytest.mark.parametrize("cls", SDES)
def test_bad_times_and_shapes_raise_value_error_naming_them(cls):
    sde = cls()
    x = torch.zeros(3, 2)
    for bad in (-0.1, 1.1, float("nan"), torch.tensor([0.5, 1.5, 0.2])):
        with pytest.raises(ValueError, match=r"\bt must lie in \[0, T"):
            sde.marginal_prob(x, bad)
    with pytest.raises(ValueError, match=r"\bt must be .*\(3,\)"):
        sde.sde(x, torch.full((4,), 0.5))
    with pytest.raises(ValueError, match=r"\bx must be \(B, \.\.\.\)"):
        sde.sde(torch.tensor(1.0), 0.5)
    with pytest.raises(ValueError, match="shape"):
        sde.prior_sampling((0, 2))
    with pytest.raises(ValueError, match="score_fn must return"):
        sde.reverse(lambda x_, t_: x_[:, :1]).sde(x, 0.5)


def test_bad_hyperparameters_raise_value_error_naming_them():
    cases = [(lambda: VESDE(sigma_min=1.0, sigma_max=1.0), "sigma_max"),
             (lambda: VESDE(sigma_min=0.0), "sigma_min"),
             (lambda: VPSDE(beta_min=-0.1), "beta_min"),
             (lambda: SubVPSDE(beta_min=2.0, beta_max=1.0), "beta_max"),
             (lambda: VPSDE(N=10), "N must exceed beta_max"),
             (lambda: VESDE(N=0), "N must be an int"),
             (lambda: VPSDE(N=100.0), "N must be an int")]
    for make, name in cases:
        with pytest.raises(ValueError, match=name):
            make()
    with pytest.raises(TypeError):
        SDE(10)  # abstract
