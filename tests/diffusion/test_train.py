"""Score models: the parameterisation per SDE family, training through fit(), the artifact store, the CLI."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from deepnotes.artifacts import ArtifactStore
from deepnotes.diffusion.data import toy_data
from deepnotes.diffusion.mixture import GaussianMixture
from deepnotes.diffusion.sde import VESDE, VPSDE, SubVPSDE
from deepnotes.diffusion.train import (ScoreModel, ScoreTraining, build_score_model, make_sde, sde_config,
                                       train_score_model, trained_score_model)

MIX = GaussianMixture(torch.tensor([[2.0, 0.0], [-2.0, 0.0]], dtype=torch.float64), torch.tensor([0.5, 0.5]))


class ExactEps(nn.Module):
    """An 'ε-network' that outputs −σ(t)·(exact score), t read back from the label 999t."""

    def __init__(self, sde):
        super().__init__()
        self.sde = sde

    def forward(self, x, label):
        t = label / 999
        std = self.sde.marginal_prob(torch.zeros_like(x), t)[1].reshape(-1, 1)
        return -std * MIX.score(x, t, self.sde)


class ExactSigmaScaled(nn.Module):
    """A VE 'network' whose output divided by σ is the exact score."""

    def __init__(self, sde):
        super().__init__()
        self.sde = sde

    def forward(self, x, sigma):
        t = torch.log(sigma / self.sde.sigma_min) / np.log(self.sde.sigma_max / self.sde.sigma_min)
        return sigma.reshape(-1, 1) * MIX.score(x, t, self.sde)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE()])
def test_vp_models_are_epsilon_networks(sde):
    x = MIX.sample(16, generator=torch.Generator().manual_seed(0))
    t = torch.rand(16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    model = ScoreModel(ExactEps(sde), sde)
    torch.testing.assert_close(model(x, t), MIX.score(x, t, sde))
    torch.testing.assert_close(model.eps(x, t * 999), ExactEps(sde)(x, t * 999))


def test_ve_models_are_sigma_scaled_and_noise_conditional():
    sde = VESDE(sigma_min=0.05, sigma_max=6.0)
    x = MIX.sample(16, generator=torch.Generator().manual_seed(0))
    t = torch.rand(16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    model = ScoreModel(ExactSigmaScaled(sde), sde)
    torch.testing.assert_close(model(x, t), MIX.score(x, t, sde))
    sigma = sde.marginal_prob(x, t)[1]
    torch.testing.assert_close(model.score_at_sigma(x, sigma), MIX.score(x, t, sde))
    with pytest.raises(TypeError, match="epsilon-network"):
        model.eps(x, t)
    with pytest.raises(TypeError, match="sigma"):
        ScoreModel(ExactEps(VPSDE()), VPSDE()).score_at_sigma(x, sigma)


def test_build_score_model_picks_the_network_by_data_shape():
    assert type(build_score_model(VPSDE(), (2,)).net).__name__ == "ScoreMLP"
    unet = build_score_model(VESDE(), (1, 8, 8), channels=8)
    assert type(unet.net).__name__ == "ScoreUNet"
    assert unet(torch.rand(3, 1, 8, 8), torch.full((3,), 0.5)).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="data_shape"):
        build_score_model(VPSDE(), (3, 4))


@pytest.mark.parametrize("sde", [VPSDE(beta_max=15.0, N=500), SubVPSDE(), VESDE(sigma_min=0.02, sigma_max=7.0)])
def test_sde_config_round_trips(sde):
    again = make_sde(**{"name": sde_config(sde)["name"]}, **{k: v for k, v in sde_config(sde).items() if k != "name"})
    assert type(again) is type(sde) and sde_config(again) == sde_config(sde)
    json.dumps(sde_config(sde))


@pytest.mark.parametrize("kw, match", [
    (dict(objective="fid"), "objective"), (dict(steps=0), "steps"), (dict(warmup=50, steps=10), "warmup"),
    (dict(lr=0.0), "lr"), (dict(ema_decay=1.0), "ema_decay"), (dict(schedule="linear"), "schedule"),
])
def test_bad_training_settings_are_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        ScoreTraining(**kw)


def small(objective="dsm", steps=40):
    return ScoreTraining(objective=objective, steps=steps, batch_size=64, lr=3e-3, warmup=4, ema_decay=0.9)


def test_training_lowers_the_loss_and_leaves_the_ema_weights_in_the_model():
    data = toy_data("8gaussians", 512, generator=torch.Generator().manual_seed(0))
    model = build_score_model(VPSDE(), (2,), hidden=32, depth=2, generator=torch.Generator().manual_seed(0))
    info = train_score_model(model, data, small(steps=150), generator=torch.Generator().manual_seed(1))
    curve = [loss for _, loss in info["loss_curve"]]
    assert info["steps"] == 150 and curve[-1] < 0.8 * curve[0]
    again = build_score_model(VPSDE(), (2,), hidden=32, depth=2, generator=torch.Generator().manual_seed(0))
    train_score_model(again, data, small(steps=150), generator=torch.Generator().manual_seed(1))
    for a, b in zip(model.parameters(), again.parameters()):  # one generator: one run
        assert torch.equal(a, b)


def test_an_interrupted_training_resumes_to_the_same_weights(tmp_path):
    data = toy_data("8gaussians", 512, generator=torch.Generator().manual_seed(0))

    def run(steps, ckpt):
        model = build_score_model(VPSDE(), (2,), hidden=16, depth=1, generator=torch.Generator().manual_seed(0))
        train_score_model(model, data, small(steps=30), generator=torch.Generator().manual_seed(1),
                          checkpoint_dir=ckpt, stop_after=steps)
        return model

    full = run(30, None)
    run(12, tmp_path)
    resumed = run(30, tmp_path)
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("objective, sde", [("ddpm", VPSDE()), ("ncsn", VESDE(sigma_min=0.1, sigma_max=8.0)),
                                            ("ssm", VESDE(sigma_min=0.1, sigma_max=8.0))])
def test_every_objective_trains(objective, sde):
    data = toy_data("moons", 256, generator=torch.Generator().manual_seed(0))
    model = build_score_model(sde, (2,), hidden=16, depth=1, generator=torch.Generator().manual_seed(0))
    info = train_score_model(model, data, small(objective, steps=10), generator=torch.Generator().manual_seed(1))
    assert np.isfinite(info["final_loss"])


@pytest.mark.parametrize("objective, sde", [("ddpm", VESDE()), ("ncsn", VPSDE()), ("ssm", SubVPSDE())])
def test_an_objective_on_the_wrong_sde_is_a_value_error(objective, sde):
    model = build_score_model(sde, (2,), hidden=8, depth=1)
    with pytest.raises(ValueError, match=objective):
        train_score_model(model, torch.randn(128, 2), small(objective), generator=torch.Generator())


def test_bad_data_is_rejected():
    model = build_score_model(VPSDE(), (2,), hidden=8, depth=1)
    with pytest.raises(ValueError, match="batch_size"):
        train_score_model(model, torch.randn(10, 2), small(), generator=torch.Generator())
    bad = torch.randn(128, 2)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        train_score_model(model, bad, small(), generator=torch.Generator())


def test_the_store_trains_once_and_loads_after(tmp_path):
    store = ArtifactStore(tmp_path)
    data = toy_data("8gaussians", 256, generator=torch.Generator().manual_seed(0))
    a, info_a = trained_score_model(store, "t", VPSDE(), data, small(steps=5), 0, hidden=8, depth=1)
    b, info_b = trained_score_model(store, "t", VPSDE(), data, small(steps=5), 0, hidden=8, depth=1)
    assert (store.trained, store.hits) == (1, 1) and info_a == info_b
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    trained_score_model(store, "t", VPSDE(), data, small(steps=5), 1, hidden=8, depth=1)  # another seed
    assert store.trained == 2
