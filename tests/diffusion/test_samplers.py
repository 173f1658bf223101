"""Samplers driven by the exact score of the 8-gaussians mixture (references/score_sde.md, sections 4 and 6).

Pass criteria: sliced W2 at most 1.5x the noise floor (W2 between two independent
data samples of the same size) and mean log p of the samples within 0.05 nats of
the data's own (-2.831). A single SW2 between two n=1000 samples varies by ~40%
from draw to draw, so both SW2 values are averaged over R = 8 chunks of n = 1000.
"""
import math

import pytest
import torch

from deepnotes.diffusion import (
    METHODS,
    VESDE,
    VPSDE,
    GaussianMixture,
    SampleResult,
    SubVPSDE,
    sample,
)

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
N_CHUNK, R = 1000, 8
EPS = {VPSDE: 1e-3, SubVPSDE: 1e-3, VESDE: 1e-5}  # score_sde's sampling eps


def gen(seed):
    return torch.Generator().manual_seed(seed)


def eight_gaussians(dtype=torch.float32):
    """FFJORD's 8gaussians: modes on a circle of radius 4, std 0.5, all divided by 1.414."""
    angle = torch.arange(8, dtype=F64) * math.pi / 4
    means = 4 * torch.stack([angle.cos(), angle.sin()], 1) / 1.414
    return GaussianMixture(means.to(dtype), torch.full((8,), 0.5 / 1.414, dtype=dtype))


def sliced_w2(a, b, n_proj=200, seed=0):
    """√(mean over random directions of W2² between the projected samples); equal sizes."""
    d = torch.randn(a.shape[1], n_proj, generator=gen(seed), dtype=F64)
    d = d / d.norm(dim=0)
    pa, pb = (a.double() @ d).sort(0).values, (b.double() @ d).sort(0).values
    return ((pa - pb) ** 2).mean().sqrt().item()


@pytest.fixture(scope="module")
def reference():
    gm = eight_gaussians()
    g = gen(1000)
    data_a = gm.sample(R * N_CHUNK, generator=g).split(N_CHUNK)
    data_b = gm.sample(R * N_CHUNK, generator=g).split(N_CHUNK)
    floor = sum(sliced_w2(a, b) for a, b in zip(data_a, data_b)) / R
    data_logp = gm.log_prob(gm.sample(200_000, generator=g)).mean().item()
    return gm, data_a, floor, data_logp


def test_data_log_p_matches_the_reference_value(reference):
    _, _, _, data_logp = reference
    assert abs(data_logp - (-2.831)) < 0.01


# method, SDE, steps: chosen so each run stays near a second (see the report for SW2/log p per row)
CASES = [("euler_maruyama", VPSDE, 200), ("euler_maruyama", VESDE, 200), ("euler_maruyama", SubVPSDE, 200),
         ("reverse_diffusion", VPSDE, 400), ("reverse_diffusion", VESDE, 400),
         ("ancestral", VPSDE, 200), ("ancestral", VESDE, 200),
         ("pc", VPSDE, 200), ("pc", VESDE, 200),
         ("ode", VPSDE, 1), ("ode", VESDE, 1), ("ode", SubVPSDE, 1),
         ("dpm_solver", VPSDE, 50), ("dpm_solver", VESDE, 50),
         ("heun", VESDE, 25), ("heun", VPSDE, 25)]


@pytest.mark.parametrize("method, cls, steps", CASES, ids=[f"{m}-{c.__name__}-{s}" for m, c, s in CASES])
def test_sampler_with_exact_score_reaches_the_data(reference, method, cls, steps):
    gm, data_a, floor, data_logp = reference
    sde = cls()
    result = sample(sde, gm.score_fn(sde), (R * N_CHUNK, 2), method=method, steps=steps, eps=EPS[cls],
                    generator=gen(0))
    assert isinstance(result, SampleResult) and result.x.shape == (R * N_CHUNK, 2)
    sw2 = sum(sliced_w2(x, a) for x, a in zip(result.x.split(N_CHUNK), data_a)) / R
    logp = gm.log_prob(result.x).mean().item()
    assert sw2 <= 1.5 * floor, (sw2, floor)
    assert abs(logp - data_logp) < 0.05, (logp, data_logp)


@pytest.mark.parametrize("method, cls, steps, nfe", [("dpm_solver", VPSDE, 20, 20), ("dpm_solver", VESDE, 20, 20),
                                                     ("heun", VESDE, 15, 29)])
def test_few_step_solvers_reach_the_sw2_floor_under_30_nfe(reference, method, cls, steps, nfe):
    gm, data_a, floor, _ = reference
    sde = cls()
    result = sample(sde, gm.score_fn(sde), (R * N_CHUNK, 2), method=method, steps=steps, eps=EPS[cls],
                    generator=gen(0))
    assert result.nfe == nfe
    sw2 = sum(sliced_w2(x, a) for x, a in zip(result.x.split(N_CHUNK), data_a)) / R
    assert sw2 <= 1.5 * floor, (sw2, floor)


@pytest.mark.parametrize("method", ["dpm_solver", "heun"])
@pytest.mark.parametrize("cls", [VPSDE, VESDE, SubVPSDE])
def test_few_step_solvers_converge_at_second_order_to_the_ode_solution(method, cls):
    sde, gm = cls(), eight_gaussians(F64)
    kw = {"eps": EPS[cls], "dtype": F64, "denoise": False}
    exact = sample(sde, gm.score_fn(sde), (100, 2), "ode", rtol=1e-10, atol=1e-10, generator=gen(3), **kw).x
    err = [(sample(sde, gm.score_fn(sde), (100, 2), method, steps=s, generator=gen(3), **kw).x - exact).abs().max()
           for s in (40, 80, 160)]
    # halving h divides the error by 4 at second order, by 2 at first
    assert err[0] / err[2] > 8 and err[1] / err[2] > 3.2, err


# --- NFE bookkeeping ----------------------------------------------------------------

NFE = {"euler_maruyama": lambda s, c: s, "reverse_diffusion": lambda s, c: s, "ancestral": lambda s, c: s,
       "pc": lambda s, c: s * (c + 1), "dpm_solver": lambda s, c: s, "heun": lambda s, c: 2 * s - 1}


@pytest.mark.parametrize("method", METHODS)
def test_reported_nfe_equals_counted_calls_and_documented_count(method):
    sde, gm = VPSDE(), eight_gaussians()
    calls = []

    def score_fn(x, t):
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        calls.append(1)
        return gm.score(x, t, sde)

    for steps, n_corr in ((30, 1), (25, 2)):
        calls.clear()
        result = sample(sde, score_fn, (16, 2), method=method, steps=steps, n_corrector_steps=n_corr,
                        generator=gen(4))
        assert result.nfe == len(calls)
        if method != "ode":
            assert result.nfe == NFE[method](steps, n_corr)
    assert sample(sde, score_fn, (4, 2), "heun", steps=5, denoise=False).nfe == 10


def test_pc_nfe_at_score_sde_defaults():
    sde, gm = VESDE(N=1000), eight_gaussians()
    result = sample(sde, gm.score_fn(sde), (2, 2), method="pc", steps=1000, eps=1e-5, generator=gen(5))
    assert result.nfe == 2000  # N (n_steps + 1)


# --- determinism, data shapes, reference paths --------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_any_data_shape_and_generator_determinism(method):
    sde = SubVPSDE() if method != "ancestral" else VPSDE()
    flat = eight_gaussians(F64)
    image = GaussianMixture(torch.cat([flat.means, flat.means], 1).reshape(8, 1, 2, 2), flat.stds)
    flat4 = GaussianMixture(image.means.reshape(8, 4), flat.stds)
    kw = {"method": method, "steps": 25, "eps": 1e-3, "dtype": F64}
    a = sample(sde, image.score_fn(sde), (5, 1, 2, 2), generator=gen(6), **kw)
    b = sample(sde, flat4.score_fn(sde), (5, 4), generator=gen(6), **kw)
    assert a.x.shape == (5, 1, 2, 2) and torch.isfinite(a.x).all()
    torch.testing.assert_close(a.x.reshape(5, 4), b.x, rtol=1e-6, atol=1e-6)
    c = sample(sde, image.score_fn(sde), (5, 1, 2, 2), generator=gen(6), **kw)
    assert torch.equal(a.x, c.x)


def test_pc_without_corrector_is_reverse_diffusion():
    sde, gm = VESDE(), eight_gaussians()
    a = sample(sde, gm.score_fn(sde), (50, 2), "pc", steps=40, n_corrector_steps=0, eps=1e-5, generator=gen(7))
    b = sample(sde, gm.score_fn(sde), (50, 2), "reverse_diffusion", steps=40, eps=1e-5, generator=gen(7))
    assert torch.equal(a.x, b.x)


def test_ode_denoise_is_tweedie():
    sde, gm = VPSDE(), eight_gaussians(F64)
    raw = sample(sde, gm.score_fn(sde), (20, 2), "ode", eps=1e-3, generator=gen(8), dtype=F64, denoise=False)
    den = sample(sde, gm.score_fn(sde), (20, 2), "ode", eps=1e-3, generator=gen(8), dtype=F64)
    t = torch.full((20,), 1e-3, dtype=F64)
    alpha, sigma = sde.alpha_sigma(t)
    want = (raw.x + sigma[:, None] ** 2 * gm.score(raw.x, t, sde)) / alpha[:, None]
    torch.testing.assert_close(den.x, want)
    assert den.nfe == raw.nfe + 1


# --- bad input ----------------------------------------------------------------------

def test_bad_arguments_raise_value_error_naming_them():
    sde, gm = VPSDE(), eight_gaussians()
    fn = gm.score_fn(sde)
    cases = [({"method": "ddim"}, "method must be one of"),
             ({"steps": 0}, "steps must be"),
             ({"steps": 2.5}, "steps must be"),
             ({"eps": 0.0}, "eps must lie"),
             ({"eps": 1.5}, "eps must lie"),
             ({"snr": 0.0}, "snr must"),
             ({"n_corrector_steps": -1}, "n_corrector_steps must"),
             ({"method": "pc", "steps": 10}, "steps=10 is too few"),
             ({"shape": (0, 2)}, "shape must"),
             ({"shape": "ab"}, "shape must")]
    for kw, message in cases:
        shape = kw.pop("shape", (4, 2))
        with pytest.raises(ValueError, match=message):
            sample(sde, fn, shape, **kw)
    with pytest.raises(ValueError, match="method='ancestral'.*SubVPSDE"):
        sample(SubVPSDE(), fn, (4, 2), method="ancestral", steps=50)
    with pytest.raises(ValueError, match="score_fn must return"):
        sample(sde, lambda x, t: x[:, :1], (4, 2), steps=3)
