"""Time-conditioned networks for score models: an MLP for (B, D) data and a small U-Net for images.

Both map (x, c) to a tensor shaped like x, where c is the noise label of the step.
The label enters through a fixed embedding e(c) of width embed_dim:

    sinusoidal  e(c) = [sin(c w_k), cos(c w_k)],  w_k = 10000^(-k/half)    (DDPM, Vaswani et al.)
    fourier     e(c) = [sin(2 pi c W_k), cos(2 pi c W_k)],  W_k ~ N(0, s^2)  (Tancik et al.; score_sde, s = 16)

then a two-layer MLP, and is added to every hidden layer (MLP) or residual block (U-Net).

Input convention (the embedding's frequencies are chosen for one scale of c):

    noise label c                         embedding                               reason
    continuous t in [0, 1] (VP, subVP)    "fourier" (s = 16)                      ~16 cycles per unit of t
    DDPM index 0..999, or 999 t           "sinusoidal"                            periods 2 pi .. 2 pi 10^4
    sigma in (0, 50] (VE, NCSN)           "fourier" with log_input=True           embeds log sigma, as NCSN++

log_input=True embeds log(c) and requires c > 0. The networks do not divide by sigma or
convert epsilon to a score: that belongs to the loss/sampler (ddpm.py's eps_to_score).

Randomness: the Fourier frequencies W are a buffer (saved in the state_dict) drawn like the
weights; pass ``generator=`` (or build under ``deepnotes.nn.init.rng_scope``) for parameters that
follow from a generator alone. Without either, construction draws from torch's global generator,
as every torch layer does.
"""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
from torch import nn

from ..nn.activations import ACTIVATIONS, GATED
from ..nn.init import rng_scope
from ..nn.upsampling import ResizeConv2d

__all__ = ["ScoreMLP", "ScoreUNet", "TimeEmbedding", "sinusoidal_embedding", "EMBEDDINGS"]

EMBEDDINGS = ("fourier", "sinusoidal")
# elementwise and deterministic: the gated ones halve the width, rrelu draws random slopes
_ACTIVATIONS = frozenset(ACTIVATIONS) - GATED - {"rrelu"}
# torch's fused kernels where torch has the function: deepnotes.nn.activations builds each from
# elementary ops (the readable reference, held equal to torch's in tests/nn), ~5x slower per call.
_FUSED = {"silu": nn.functional.silu, "relu": nn.functional.relu, "gelu": nn.functional.gelu, "tanh": torch.tanh,
          "sigmoid": torch.sigmoid, "mish": nn.functional.mish, "elu": nn.functional.elu,
          "softplus": nn.functional.softplus}


def _activation(name: str):
    return _FUSED.get(name, ACTIVATIONS[name])


def sinusoidal_embedding(c: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DDPM's timestep embedding: c (B,) -> (B, dim) = [sin(c w), cos(c w)], w_k = max_period^(-k/half)."""
    half = dim // 2
    w = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=c.device) / half)
    arg = c[:, None].to(w.dtype if not c.is_floating_point() else c.dtype) * w[None, :]  # (B, 1) * (1, half)
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    return nn.functional.pad(emb, (0, dim % 2))  # odd dim: one zero column


def _positive_int(value, name: str, owner: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def _labels(t, x: torch.Tensor, owner: str) -> torch.Tensor:
    """t as a scalar or (B,) -> (B,) on x's device, float32 (float64 for float64 x: labels up to 999 need it)."""
    t = torch.as_tensor(t, device=x.device)
    B = x.shape[0]
    if t.dim() == 0:
        t = t.expand(B)
    elif t.shape != (B,):
        raise ValueError(f"{owner}: t must be a scalar or of shape ({B},) (the batch of x), got {tuple(t.shape)}")
    return t.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


class TimeEmbedding(nn.Module):
    """Noise label c (B,) -> (B, out_dim): fixed embedding of width embed_dim, then Linear-act-Linear."""

    def __init__(self, embed_dim: int, out_dim: int, embedding: str = "fourier", fourier_scale: float = 16.0,
                 log_input: bool = False, act: str = "silu", owner: str = "TimeEmbedding"):
        super().__init__()
        _positive_int(embed_dim, "embed_dim", owner)
        if embed_dim % 2:
            raise ValueError(f"{owner}: embed_dim must be even (sin and cos halves), got {embed_dim}")
        if embedding not in EMBEDDINGS:
            raise ValueError(f"{owner}: embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        if not (isinstance(fourier_scale, (int, float)) and fourier_scale > 0):
            raise ValueError(f"{owner}: fourier_scale must be a positive number, got {fourier_scale!r}")
        if act not in _ACTIVATIONS:
            raise ValueError(f"{owner}: activation must be one of {sorted(_ACTIVATIONS)}, got {act!r}")
        self.embedding, self.log_input, self.embed_dim, self.owner = embedding, bool(log_input), embed_dim, owner
        # torch.randn: drawn from the generator of the enclosing rng_scope, like the Linear weights
        self.register_buffer("W", torch.randn(embed_dim // 2) * fourier_scale if embedding == "fourier" else None)
        self.act = _activation(act)
        self.lin1, self.lin2 = nn.Linear(embed_dim, out_dim), nn.Linear(out_dim, out_dim)

    def embed(self, c: torch.Tensor) -> torch.Tensor:
        """The fixed part: (B,) -> (B, embed_dim)."""
        if self.log_input:
            if bool((c <= 0).any()):
                raise ValueError(f"{self.owner}: log_input=True needs t > 0 (a sigma), got min {c.min().item():g}")
            c = torch.log(c)
        if self.embedding == "sinusoidal":
            return sinusoidal_embedding(c, self.embed_dim)
        arg = 2 * math.pi * c[:, None] * self.W[None, :]  # (B, 1) * (1, E/2) -> (B, E/2)
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        e = self.embed(c).to(self.lin1.weight.dtype)  # embedded in float32/64, then the weights' dtype
        return self.lin2(self.act(self.lin1(e)))


def _build(generator: torch.Generator | None):
    return rng_scope(generator) if generator is not None else contextlib.nullcontext()


class ScoreMLP(nn.Module):
    """(x (B, D), t scalar or (B,)) -> (B, D): an MLP with the time embedding added to each hidden layer.

    e = act(TimeEmbedding(t));  h_0 = W_in x;  h_l = W_l act(h_{l-1} + U_l e), l = 1..depth;
    out = W_out act(h_depth). depth counts the hidden (hidden x hidden) layers.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, embed_dim: int = 64,
                 activation: str = "silu", *, embedding: str = "fourier", fourier_scale: float = 16.0,
                 log_input: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        owner = "ScoreMLP"
        self.dim = _positive_int(dim, "dim", owner)
        _positive_int(hidden, "hidden", owner)
        self.depth = _positive_int(depth, "depth", owner)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"{owner}: activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.act = _activation(activation)
        with _build(generator):
            self.time = TimeEmbedding(embed_dim, hidden, embedding, fourier_scale, log_input, activation, owner)
            self.inp = nn.Linear(dim, hidden)
            self.temb = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
            self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
            self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ScoreMLP: x must be (B, {self.dim}), got {tuple(x.shape)}")
        e = self.act(self.time(_labels(t, x, "ScoreMLP")))  # (B,) -> (B, hidden)
        h = self.inp(x)  # (B, D) -> (B, hidden)
        for layer, temb in zip(self.layers, self.temb):
            h = layer(self.act(h + temb(e)))
        return self.out(self.act(h))  # (B, hidden) -> (B, D)


def _groups(channels: int) -> int:
    """The largest group count <= 8 dividing `channels` (GroupNorm needs an exact split)."""
    return max(g for g in range(1, 9) if channels % g == 0)


class ResBlock(nn.Module):
    """(B, C_in, H, W), temb (B, E) -> (B, C_out, H, W): GN-SiLU-conv, + Linear(temb), GN-SiLU-conv, + skip."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(temb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]  # (B, C_out) -> (B, C_out, 1, 1), the same shift at every pixel
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class ScoreUNet(nn.Module):
    """(x (B, C, R, R), t scalar or (B,)) -> (B, C, R, R): a small DDPM-style U-Net for 8x8 / 16x16 images.

    Level i works at R / 2^i pixels with channels * channel_mult[i] channels and num_res_blocks
    residual blocks; levels are joined by a stride-2 conv (down) and nearest resize + conv
    (deepnotes.nn.upsampling.ResizeConv2d, up). Every block's output on the way down is a skip
    concatenated on the way up; the middle runs two blocks at the coarsest level. The label t
    follows the module docstring's convention; its embedding (width 4 channels) shifts every block.
    """

    def __init__(self, in_channels: int = 1, channels: int = 32, channel_mult: Sequence[int] = (1, 2),
                 num_res_blocks: int = 1, embed_dim: int = 128, resolution: int = 8, *,
                 embedding: str = "fourier", fourier_scale: float = 16.0, log_input: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__()
        owner = "ScoreUNet"
        self.in_channels = _positive_int(in_channels, "in_channels", owner)
        _positive_int(channels, "channels", owner)
        _positive_int(num_res_blocks, "num_res_blocks", owner)
        mult = tuple(channel_mult) if isinstance(channel_mult, (tuple, list)) else ()
        if not mult or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in mult):
            raise ValueError(f"{owner}: channel_mult must be a non-empty sequence of positive ints, "
                             f"got {channel_mult!r}")
        factor = 2 ** (len(mult) - 1)
        _positive_int(resolution, "resolution", owner)
        if resolution % factor:
            raise ValueError(f"{owner}: resolution must be divisible by 2^(len(channel_mult)-1) = {factor}, "
                             f"got {resolution}")
        self.resolution, self.channel_mult = resolution, mult
        temb_dim = 4 * channels
        with _build(generator):
            self.time = TimeEmbedding(embed_dim, temb_dim, embedding, fourier_scale, log_input, "silu", owner)
            self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
            self.down, skips, c = nn.ModuleList(), [channels], channels
            for i, m in enumerate(mult):
                for _ in range(num_res_blocks):
                    self.down.append(ResBlock(c, channels * m, temb_dim))
                    c = channels * m
                    skips.append(c)
                if i < len(mult) - 1:
                    self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # (R, R) -> (R/2, R/2)
                    skips.append(c)
            self.mid = nn.ModuleList([ResBlock(c, c, temb_dim), ResBlock(c, c, temb_dim)])
            self.up = nn.ModuleList()
            for i, m in reversed(list(enumerate(mult))):
                for _ in range(num_res_blocks + 1):
                    self.up.append(ResBlock(c + skips.pop(), channels * m, temb_dim))
                    c = channels * m
                if i > 0:
                    self.up.append(ResizeConv2d(c, c, scale=2, mode="nearest"))  # (r, r) -> (2r, 2r)
            self.norm_out = nn.GroupNorm(_groups(c), c)
            self.conv_out = nn.Conv2d(c, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        R, C = self.resolution, self.in_channels
        if x.dim() != 4 or tuple(x.shape[1:]) != (C, R, R):
            raise ValueError(f"ScoreUNet: x must be (B, {C}, {R}, {R}), got {tuple(x.shape)}")
        temb = nn.functional.silu(self.time(_labels(t, x, "ScoreUNet")))  # (B,) -> (B, 4 channels)
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for block in self.mid:
            h = block(h, temb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), temb)  # (B, c + c_skip, r, r) -> (B, c_out, r, r)
            else:
                h = layer(h)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))
