"""NCSN / NCSNv2 against the reference facts (references/score_sde.md, sections 2 and 6)."""
import math

import pytest
import torch

from deepnotes.diffusion import (
    annealed_langevin,
    geometric_sigmas,
    langevin,
    ncsn_loss,
    ncsnv2_gamma,
    ncsnv2_gamma_criterion,
    ncsnv2_sigma_max,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# ermongroup/ncsn models/gmm.py GMMDistAnneal: weight 0.8 at +(5, 5), 0.2 at −(5, 5), unit std.
TOY_MEANS = torch.tensor([[5.0, 5.0], [-5.0, -5.0]], dtype=torch.float64)
TOY_WEIGHTS = torch.tensor([0.8, 0.2], dtype=torch.float64)


def toy_score(x, sigma=0.0):
    """Exact score of the toy mixture convolved with N(0, σ² I): component variance 1 + σ²."""
    var = 1.0 + torch.as_tensor(sigma, dtype=x.dtype) ** 2
    var = var.reshape(-1, 1, 1) if var.dim() else var                  # (B,) -> (B, 1, 1)
    diff = TOY_MEANS.to(x.dtype) - x[:, None, :]                        # (B, K, 2)
    logits = TOY_WEIGHTS.log().to(x.dtype) - 0.5 * diff.square().sum(-1) / var.reshape(-1, 1)
    r = torch.softmax(logits, dim=1)                                    # (B, K)
    return (r[:, :, None] * diff / var).sum(1)


def heavy_mass(x):
    return (x.sum(1) > 0).double().mean().item()  # closer to +(5, 5) than to −(5, 5)


def test_geometric_sigmas_ncsn_defaults():
    s = geometric_sigmas()
    assert s.shape == (10,)
    assert s[0].item() == pytest.approx(1.0) and s[-1].item() == pytest.approx(0.01)
    ratios = s[:-1] / s[1:]
    assert torch.allclose(ratios, torch.full_like(ratios, 1.668), atol=1e-3)  # reference: ratio 1.668
    toy = geometric_sigmas(20.0, 1.0, 10)
    assert toy[0].item() == pytest.approx(20.0) and toy[-1].item() == pytest.approx(1.0)


def test_ncsnv2_gamma_reference():
    # CIFAR-10 config: σ 50 -> 0.01 over L = 232 levels, D = 3072: γ = 1.0376, criterion 0.567.
    gamma_cifar = (50 / 0.01) ** (1 / 231)
    assert gamma_cifar == pytest.approx(1.0376, abs=1e-4)
    assert ncsnv2_gamma_criterion(gamma_cifar, 3072) == pytest.approx(0.567, abs=1e-3)
    gamma = ncsnv2_gamma(3072)
    assert ncsnv2_gamma_criterion(gamma, 3072) == pytest.approx(0.5, abs=1e-8)
    assert 1.0376 < gamma < 1.045  # a larger ratio than the config's, whose overlap is above 0.5
    assert ncsnv2_gamma(100) > ncsnv2_gamma(3072)  # fewer dimensions tolerate wider steps
    assert ncsnv2_gamma_criterion(1.0, 10) == pytest.approx(math.erf(3 / math.sqrt(2)))


def test_ncsnv2_sigma_max_chunked():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(301, 2, 2, 2, generator=g)
    assert ncsnv2_sigma_max(x, chunk_size=7) == pytest.approx(torch.pdist(x.reshape(301, -1)).max().item(), rel=1e-6)
    assert ncsnv2_sigma_max(torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])) == pytest.approx(5.0)


def test_ncsn_loss_floor_with_exact_score():
    # Data N(0, S² I), level σ: per sample ½‖σ s + z‖² = ½ f_σ χ²_D with f_σ = S²/(S² + σ²).
    S, B, D = 0.5, 4000, 4
    sigmas = geometric_sigmas(1.0, 0.01, 10, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = S * torch.randn(B, D, generator=g, dtype=torch.float64)
    loss = ncsn_loss(lambda y, sigma: -y / (S ** 2 + sigma[:, None] ** 2), x, sigmas, generator=g)
    f = S ** 2 / (S ** 2 + sigmas ** 2)
    expected = 0.5 * D * f.mean().item()
    se = math.sqrt(((0.5 * f) ** 2 * (D * D + 2 * D)).mean().item() - expected ** 2) / math.sqrt(B)
    assert abs(loss.item() - expected) < 4 * se


def test_annealed_vs_plain_langevin_on_ncsn_toy():
    # toy_runner.py: 1280 -> 4000 uniform starts on [-8, 8]², lr = 0.1 in the paper's x + lr/2·s
    # + √lr·z, i.e. step 0.05 here; plain: 1000 steps on the data score; annealed: σ 20 -> 1, T = 100.
    n = 4000
    g = torch.Generator().manual_seed(2)
    start = torch.rand(n, 2, generator=g, dtype=torch.float64) * 16 - 8
    sigmas = geometric_sigmas(20.0, 1.0, 10, dtype=torch.float64)
    annealed = annealed_langevin(toy_score, start, sigmas, n_steps_each=100, step_lr=0.05, generator=g)
    plain = langevin(toy_score, start, n_steps=1000, step_size=0.05, generator=g)
    assert annealed.nfe == 1000 and plain.nfe == 1000
    assert heavy_mass(annealed.x) == pytest.approx(0.78, abs=0.03)
    assert heavy_mass(plain.x) == pytest.approx(0.5, abs=0.1)


def test_langevin_stationary_variance():
    # ULA on N(0, 1): x <- (1 − δ) x + √(2δ) z has stationary variance 1 / (1 − δ/2).
    delta, n = 0.2, 20000
    g = torch.Generator().manual_seed(3)
    out = langevin(lambda x: -x, torch.zeros(n, 1, dtype=torch.float64), n_steps=100, step_size=delta, generator=g)
    var = 1 / (1 - delta / 2)
    assert out.x.var().item() == pytest.approx(var, abs=4 * var * math.sqrt(2 / n))


def test_annealed_langevin_denoise_and_reproducibility():
    sigmas = geometric_sigmas(1.0, 0.1, 3)
    x = torch.zeros(5, 3, 2)  # any shape (B, ...)
    seen = []

    def score_fn(y, sigma):
        seen.append(sigma)
        return -y / (1 + sigma[:, None, None] ** 2)

    a = annealed_langevin(score_fn, x, sigmas, n_steps_each=4, generator=torch.Generator().manual_seed(4), denoise=True)
    b = annealed_langevin(score_fn, x, sigmas, n_steps_each=4, generator=torch.Generator().manual_seed(4), denoise=True)
    assert a.nfe == 3 * 4 + 1 and a.x.shape == x.shape and torch.equal(a.x, b.x)
    assert seen[0].shape == (5,) and seen[0][0].item() == pytest.approx(1.0) and seen[-1][0].item() == pytest.approx(0.1)


def test_bad_input():
    x = torch.zeros(4, 2)
    score = lambda y, sigma: -y
    with pytest.raises(ValueError, match="sigmas"):
        annealed_langevin(score, x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="sigmas"):
        ncsn_loss(score, x, torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="n_steps_each"):
        annealed_langevin(score, x, geometric_sigmas(), n_steps_each=0)
    with pytest.raises(ValueError, match="n_steps"):
        langevin(lambda y: -y, x, n_steps=0, step_size=0.1)
    with pytest.raises(ValueError, match="step_size"):
        langevin(lambda y: -y, x, n_steps=1, step_size=0.0)
    with pytest.raises(ValueError, match="score_fn"):
        annealed_langevin(lambda y, sigma: y[:, 0], x, geometric_sigmas(), n_steps_each=1)
    with pytest.raises(ValueError, match="x"):
        langevin(lambda y: -y, torch.tensor(0.0), n_steps=1, step_size=0.1)
    with pytest.raises(ValueError, match="sigma_min"):
        geometric_sigmas(0.01, 1.0)
    with pytest.raises(ValueError, match="dims"):
        ncsnv2_gamma(4)  # √(2·4) < 3: the criterion never falls to 0.5
    with pytest.raises(ValueError, match="x"):
        ncsnv2_sigma_max(torch.zeros(1, 3))
