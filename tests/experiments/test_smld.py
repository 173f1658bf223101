"""Note 8 experiment: tiny-scale wiring, and the measures it is decided by."""
import pytest
import torch

from deepnotes.experiments.smld import LEARNED_BOUND, exact_scores, relative_score_error


def test_tiny_run_is_wired(run_tiny):
    result, ctx = run_tiny("smld")
    assert [c.label for c in result.checks] == ["annealed share − 0.78 (CI)", "plain share CI high",
                                                "ncsn score error CI high", "ssm score error CI high"]
    assert [c.threshold for c in result.checks] == [0.03, 0.75, LEARNED_BOUND, LEARNED_BOUND]
    m = result.metrics
    assert 0.0 <= m["annealed_heavy_share"] <= 1.0 and 0.0 <= m["plain_heavy_share"] <= 1.0
    assert sorted(f.name for f in ctx.figures) == ["mode-mass", "score-fields"]
    assert ctx.artifacts.trained == 4  # 2 seeds x (DSM, SSM)


def test_the_exact_score_has_no_error_and_a_wrong_one_has_error_one():
    conditional, _ = exact_scores()
    assert relative_score_error(lambda x, s: conditional(x.double(), s[0].item()).float(), 256, 0) < 1e-10
    assert relative_score_error(lambda x, s: torch.zeros_like(x), 256, 0) == pytest.approx(1.0)


def test_the_data_score_is_the_mixtures_gradient():
    from deepnotes.diffusion.data import toy_mixture

    _, data = exact_scores()
    mix = toy_mixture("ncsn", dtype=torch.float64).to_mixture()
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 4
    x.requires_grad_(True)
    grad = torch.autograd.grad(mix.log_prob(x).sum(), x)[0]
    torch.testing.assert_close(data(x.detach()), grad)


def test_the_full_scale_digits_part_runs_and_measures_a_frechet_distance(tmp_path):
    from deepnotes.artifacts import ArtifactStore
    from deepnotes.experiments.base import Context
    from deepnotes.experiments.smld import digits_samples

    ctx = Context(slug="smld", scale="full", seed=0, device="cpu", out_dir=tmp_path, artifacts=ArtifactStore(tmp_path))
    m = digits_samples(ctx, steps=3, n_steps_each=1, n=32)
    assert m["digits_fd"] > 0 and 0 <= m["digits_fd_floor"] < m["digits_fd"]  # 3 steps: far from the digits
    assert [f.name for f in ctx.figures] == ["digits"]
