"""run_tiny: an experiment at tiny scale, in this process, with its own output folder and artifact store,
checked for the form every Result must have."""
import pytest

from deepnotes.artifacts import ArtifactStore
from deepnotes.experiments import REGISTRY
from deepnotes.experiments.base import Context, Result, seed_everything


@pytest.fixture
def run_tiny(tmp_path):
    """run_tiny(slug, seed=0) -> (Result, Context). Verdicts at tiny scale mean nothing; wiring does."""

    def run(slug: str, seed: int = 0, scale: str = "tiny"):
        experiment = REGISTRY[slug]
        ctx = Context(slug=slug, scale=scale, seed=seed, device="cpu", out_dir=tmp_path / f"run-{seed}",
                      artifacts=ArtifactStore(tmp_path / "artifacts"))
        seed_everything(seed)
        result = experiment.run(ctx)
        assert isinstance(result, Result)
        assert_well_formed(result, ctx)
        return result, ctx

    return run


def assert_well_formed(result, ctx):
    """What every experiment's Result must satisfy, whatever its verdict."""
    assert result.checks, "a verdict needs checks"
    for check in result.checks:
        assert check.label, f"check {check.name!r} has no short label"
        assert check.op in ("<=", "<", ">=", ">")
    assert result.verdict in ("reproduced", "partial", "not reproduced")
    for name, value in result.metrics.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool), name
    for fig in ctx.figures:
        assert (ctx.out_dir / fig.path).stat().st_size > 1000, fig.path
    for table in result.tables:
        assert all(len(row) == len(table.columns) for row in table.rows), table.title
    assert result.summary
