"""Video classifiers with one signature: forward(x (N, C, T, H, W)) -> logits (N, num_classes).

    name       class                module      temporal modelling
    tsn        TSN                  tsn.py      none: average of per-frame features (order-blind)
    tsm        TSM                  tsm.py      temporal shift on each block's residual branch
    tdn        TDN                  tdn.py      RGB differences (S-TDM) + feature-difference gates (L-TDM)
    tam        TANet                tam.py      local sigmoid gate + global adaptive temporal kernel
    c3d        C3D                  cnn3d.py    3x3x3 convs, 8-conv VGG-style
    r3d        R3D                  cnn3d.py    3D ResNet, 3x3x3 convs
    r2plus1d   R2Plus1D             cnn3d.py    (1x3x3, 3x1x1) factored convs

Every model has forward_features(x) -> (N, F) pooled features and .head, the nn.Linear classifier.
2D models (tsn, tsm, tdn, tam) fold T into the batch and need T == n_segments (TDN: n_segments *
clip_len); 3D models take any T. in_channels = 2L takes stacked optical flow.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ...nn.init import rng_scope
from .cnn3d import C3D, R2Plus1D, R3D
from .resnet import DEPTHS
from .tam import TANet
from .tdn import TDN
from .tsm import TSM
from .tsn import TSN

__all__ = ["build_model", "MODELS", "TWO_D", "THREE_D"]

_CLASSES = {"tsn": TSN, "tsm": TSM, "tdn": TDN, "tam": TANet, "c3d": C3D, "r3d": R3D, "r2plus1d": R2Plus1D}
MODELS = tuple(_CLASSES)
TWO_D = ("tsn", "tsm", "tdn", "tam")
THREE_D = ("c3d", "r3d", "r2plus1d")


def build_model(name: str, num_classes: int, n_segments: int, in_channels: int = 3, depth: int = 18,
                base_width: int = 64, dropout: float = 0.0, *, width: float | None = None,
                generator: torch.Generator | None = None, **kw) -> nn.Module:
    """Builds one of MODELS.

    depth in {10, 18, 34, 50} (ResNets; c3d always has its 8 convs and ignores depth). base_width is the
    first stage's width (64 = the papers' networks; 8-16 train in minutes on a CPU); width, if given, is
    a multiplier of 64 instead (base_width = round(64 width)). generator: parameters drawn from it alone.
    Extra keywords go to the class: tsm fold_div=8, online=False; tdn clip_len=1|5, alpha, beta;
    tam kernel_size=3; r3d/r2plus1d temporal_strides; c3d batch_norm; all but c3d zero_init_residual.
    """
    if name not in _CLASSES:
        raise ValueError(f"unknown video model {name!r}; choose one of {', '.join(MODELS)}")
    if width is not None:
        if not isinstance(width, (int, float)) or width <= 0:
            raise ValueError(f"width must be a positive multiplier of 64, got {width!r}")
        if base_width != 64:
            raise ValueError(f"give width (a multiplier) or base_width, not both (got {width!r} and {base_width!r})")
        base_width = max(1, round(64 * width))
    if name != "c3d" and depth not in DEPTHS:
        raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth!r}")
    if not isinstance(base_width, int) or base_width < 1:
        raise ValueError(f"base_width must be a positive int, got {base_width!r}")
    scope = rng_scope(generator) if generator is not None else contextlib.nullcontext()
    with scope:
        if name == "c3d":
            return C3D(num_classes, n_segments, in_channels, base_width=base_width, dropout=dropout, **kw)
        return _CLASSES[name](num_classes, n_segments, in_channels, depth=depth, base_width=base_width,
                              dropout=dropout, **kw)
