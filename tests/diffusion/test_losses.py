"""Score-matching losses against closed forms (references/score_sde.md, sections 1 and 6)."""
import math

import pytest
import torch

from deepnotes.diffusion import DDPM, VPSDE, ddpm_loss, dsm_loss, ssm_loss

pytestmark = pytest.mark.usefixtures("one_thread")

BETA_0, BETA_1 = 0.1, 20.0
S = 0.5  # data std: x0 ~ N(0, S² I)


def vp_marginal(t: float) -> tuple[float, float]:
    """score_sde's VP marginal: mean coefficient e^m and std √(1 − e^{2m})."""
    m = -0.25 * t * t * (BETA_1 - BETA_0) - 0.5 * t * BETA_0
    return math.exp(m), math.sqrt(1.0 - math.exp(2.0 * m))


def exact_vp_score(x, t):
    """Score of N(0, (α²S² + σ²) I), the VP-noised Gaussian data, at per-sample times t (B,)."""
    m = -0.25 * t ** 2 * (BETA_1 - BETA_0) - 0.5 * t * BETA_0
    var = torch.exp(2 * m) * S ** 2 + 1 - torch.exp(2 * m)
    return -x / var.reshape(-1, *([1] * (x.dim() - 1)))


def test_reference_floor_value():
    alpha, sigma = vp_marginal(0.5)
    assert alpha == pytest.approx(0.2812, abs=1e-4) and sigma == pytest.approx(0.9597, abs=1e-4)
    floor = alpha ** 2 * S ** 2 / (alpha ** 2 * S ** 2 + sigma ** 2)
    assert floor == pytest.approx(0.02101, abs=5e-6)


@pytest.mark.parametrize("weighting,reduce", [("default", "mean"), ("default", "sum"), ("likelihood", "mean")])
def test_dsm_floor_with_exact_score(weighting, reduce):
    # Per dimension s·σ + z ~ N(0, f) with f = α²S²/(α²S² + σ²), so ‖s·σ + z‖²/D is f·χ²_D/D.
    t, B, D = 0.5, 4000, 8
    alpha, sigma = vp_marginal(t)
    f = alpha ** 2 * S ** 2 / (alpha ** 2 * S ** 2 + sigma ** 2)
    scale = {"mean": 1.0, "sum": 0.5 * D}[reduce]
    if weighting == "likelihood":  # ‖s + z/σ‖²·g² = ‖s·σ + z‖²·β(t)/σ²
        scale *= (BETA_0 + t * (BETA_1 - BETA_0)) / sigma ** 2
    expected, se = scale * f, scale * f * math.sqrt(2.0 / (B * D))
    g = torch.Generator().manual_seed(0)
    x0 = S * torch.randn(B, D, generator=g, dtype=torch.float64)
    loss = dsm_loss(exact_vp_score, VPSDE(), x0, t=t, weighting=weighting, reduce=reduce, generator=g)
    assert loss.shape == ()
    assert abs(loss.item() - expected) < 4 * se


def test_dsm_any_shape_and_random_times():
    # Images (B, C, H, W) and t ~ U(eps, 1): the expectation is the time-average of the floor.
    B = 2000
    g = torch.Generator().manual_seed(1)
    x0 = S * torch.randn(B, 2, 3, 3, generator=g, dtype=torch.float64)
    loss = dsm_loss(exact_vp_score, VPSDE(), x0, generator=g)
    ts = torch.linspace(1e-5, 1, 20001, dtype=torch.float64)
    m = -0.25 * ts ** 2 * (BETA_1 - BETA_0) - 0.5 * ts * BETA_0
    a2 = torch.exp(2 * m)
    floor = a2 * S ** 2 / (a2 * S ** 2 + 1 - a2)
    expected = torch.trapezoid(floor, ts).item() / (1 - 1e-5)
    se = math.sqrt((floor ** 2 * (1 + 2 / 18)).mean().item() - expected ** 2) / math.sqrt(B)
    assert abs(loss.item() - expected) < 4 * se


def test_dsm_trains_and_is_reproducible():
    net = torch.nn.Linear(3, 3)
    x0 = torch.randn(16, 3, generator=torch.Generator().manual_seed(2))
    score_fn = lambda x, t: net(x)
    a = dsm_loss(score_fn, VPSDE(), x0, generator=torch.Generator().manual_seed(3))
    b = dsm_loss(score_fn, VPSDE(), x0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    a.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
@pytest.mark.parametrize("variance_reduction", [False, True])
def test_ssm_expectation_for_gaussian(distribution, variance_reduction):
    # J = E[tr ∇s + ½‖s‖²] = −D/S² + D/(2S²) = −D/(2S²) for the exact score −x/S².
    B, D, P = 4000, 4, 2
    g = torch.Generator().manual_seed(4)
    x = S * torch.randn(B, D, generator=g, dtype=torch.float64)
    loss = ssm_loss(lambda y: -y / S ** 2, x, n_projections=P, distribution=distribution,
                    variance_reduction=variance_reduction, generator=g)
    # Closed-form variance of one term; the P projections of a sample share x, so the
    # standard error of the mean is at most √(var/B) (Cauchy–Schwarz).
    if distribution == "rademacher":  # vᵀ∇(vᵀs) = −D/S² exactly
        var = D / (2 * S ** 4) if variance_reduction else 0.5 * (D / S ** 2) ** 2
    else:  # W = ‖v‖² ~ χ²_D enters both terms
        var = 2.5 * D / S ** 4 if variance_reduction else (D ** 2 + 3 * D) / (2 * S ** 4)
    se = math.sqrt(var / B)
    assert abs(loss.item() + D / (2 * S ** 2)) < 4 * se


def test_ssm_minimised_by_exact_score():
    # Common random numbers: one x and one v for every candidate score.
    B, D = 2000, 3
    x = S * torch.randn(B, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def J(score):
        return ssm_loss(score, x, variance_reduction=True, generator=torch.Generator().manual_seed(6)).item()

    best = J(lambda y: -y / S ** 2)
    for other in (lambda y: -0.8 * y / S ** 2, lambda y: -1.25 * y / S ** 2, lambda y: -y / S ** 2 + 0.3):
        assert J(other) > best


def test_ssm_gradient_through_jacobian_term():
    # s_c(x) = −c x / S²: with Rademacher v the loss is −cD/S² + ½c²‖x‖²/S⁴ (VR), so
    # dJ/dc = −D/S² + c·mean‖x‖²/S⁴ exactly, which needs create_graph through the Jacobian term.
    B, D = 64, 5
    x = S * torch.randn(B, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    loss = ssm_loss(lambda y: -c * y / S ** 2, x, variance_reduction=True, generator=torch.Generator().manual_seed(8))
    loss.backward()
    sq = x.square().sum(1).mean().item()
    assert loss.item() == pytest.approx(-0.7 * D / S ** 2 + 0.5 * 0.49 * sq / S ** 4, rel=1e-12)
    assert c.grad.item() == pytest.approx(-D / S ** 2 + 0.7 * sq / S ** 4, rel=1e-12)


def test_ddpm_loss_floor_with_exact_eps():
    # Gaussian data: the optimal ε-prediction E[ε | x_i] = √(1−ᾱ_i)·x_i / (ᾱ_i S² + 1 − ᾱ_i)
    # leaves a per-dimension error f_i = ᾱ_i S² / (ᾱ_i S² + 1 − ᾱ_i); i ~ U{0..N−1}.
    ddpm = DDPM()
    ab = ddpm.alpha_bars
    f = ab * S ** 2 / (ab * S ** 2 + 1 - ab)

    def eps_model(x, label):
        i = label.round().long()
        assert torch.equal(label, i.to(label.dtype))  # the label is the integer index as a float
        a = ab[i].reshape(-1, 1)
        return (1 - a).sqrt() * x / (a * S ** 2 + 1 - a)

    B, D = 8000, 4
    g = torch.Generator().manual_seed(9)
    x0 = S * torch.randn(B, D, generator=g, dtype=torch.float64)
    loss = ddpm_loss(eps_model, ddpm, x0, generator=g).item()
    expected = f.mean().item()
    se = math.sqrt(((f ** 2).mean().item() * (1 + 2 / D) - expected ** 2) / B)
    assert abs(loss - expected) < 4 * se


@pytest.mark.parametrize("kwargs,name", [({"weighting": "snr"}, "weighting"), ({"reduce": "max"}, "reduce"),
                                         ({"eps": 1.5}, "eps"), ({"t": 1.5}, "t")])
def test_dsm_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        dsm_loss(exact_vp_score, VPSDE(), torch.randn(4, 2), **kwargs)


def test_bad_shapes():
    with pytest.raises(ValueError, match="score_fn"):
        dsm_loss(lambda x, t: x[:, :1], VPSDE(), torch.randn(4, 2))
    with pytest.raises(ValueError, match="x0"):
        dsm_loss(exact_vp_score, VPSDE(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="n_projections"):
        ssm_loss(lambda y: -y, torch.randn(4, 2), n_projections=0)
    with pytest.raises(ValueError, match="distribution"):
        ssm_loss(lambda y: -y, torch.randn(4, 2), distribution="uniform")
    with pytest.raises(ValueError, match="eps_model"):
        ddpm_loss(lambda x, i: x.sum(1), DDPM(), torch.randn(4, 2))
