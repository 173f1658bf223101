"""Score-based generative modelling (notes 3, 8 and 9): SDEs, score-matching losses,
samplers, ODE likelihoods, NCSN (SMLD) and DDPM, on data of any shape (B, ...).

    sde.py         VESDE, VPSDE, SubVPSDE (score_sde's formulas and defaults)
    mixture.py     GaussianMixture: exact noised score, for tests with no training
    losses.py      denoising / sliced score matching, the DDPM epsilon loss
    samplers.py    sample(sde, score_fn, shape, method=...) -> SampleResult(x, nfe)
    likelihood.py  log_likelihood via the probability-flow ODE, bits/dim
    smld.py        NCSN: geometric sigmas, annealed and plain Langevin
    ddpm.py        discrete DDPM and its epsilon-network <-> VP-SDE score conversion
    nets.py        time-conditioned MLP and a small U-Net
    data.py        2-D toy sets and sklearn digits
    metrics.py     sliced Wasserstein, energy distance, MMD, mode weights, digits Frechet distance
    train.py       ScoreModel (a network as score_fn), ScoreTraining, train_score_model through fit()
    cli.py         deepnotes diffusion train|sample|nll

Names are imported lazily from their modules, so `import deepnotes.diffusion` stays cheap.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "sde": ["SDE", "VESDE", "VPSDE", "SubVPSDE"],
    "mixture": ["GaussianMixture"],
    "losses": ["dsm_loss", "ssm_loss", "ddpm_loss"],
    "samplers": ["sample", "SampleResult", "METHODS"],
    "likelihood": ["log_likelihood", "bits_per_dim", "dequantization_offset"],
    "smld": ["geometric_sigmas", "ncsnv2_sigma_max", "ncsnv2_gamma", "ncsnv2_gamma_criterion", "ncsn_loss",
             "annealed_langevin", "langevin"],
    "ddpm": ["DDPM", "eps_to_score", "score_to_eps"],
    "nets": ["ScoreMLP", "ScoreUNet"],
    "data": ["toy_data", "TOY_SETS", "digits_data", "toy_mixture", "LEVELS_DIGITS", "load_array"],
    "train": ["ScoreModel", "ScoreTraining", "build_score_model", "train_score_model", "trained_score_model",
              "make_sde", "sde_config", "SDES"],
    "metrics": ["sliced_wasserstein", "energy_distance", "mmd_rbf", "mode_weights", "DigitsFeatures",
                "frechet_distance", "train_digits_features", "digits_fd"],
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
