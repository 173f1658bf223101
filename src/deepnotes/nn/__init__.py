"""Building blocks: activation functions, the feed-forward block, upsampling operators.

Functions live in their modules (`deepnotes.nn.activations.gelu`,
`deepnotes.nn.upsampling.interpolate`); the Modules are re-exported here.
"""
from . import activations, upsampling  # noqa: F401  (submodules)
from .activation_modules import (
    CELU, ELU, GEGLU, GELU, GLU, SELU, BilinearGLU, Hardsigmoid, Hardswish, Hardtanh, LeakyReLU, LogSigmoid,
    Mish, PReLU, ReGLU, ReLU, ReLU6, RReLU, Sigmoid, SiLU, Softplus, Softsign, Step, SwiGLU, Swish, Tanh,
)
from .feedforward import FeedForward
from .upsampling import (
    PixelShuffle, PixelUnshuffle, ResizeConv2d, SubPixelConv2d, Upsample, conv_transpose2d, icnr_, interpolate,
    max_unpool2d, pixel_shuffle, pixel_unshuffle,
)

__all__ = [
    "activations", "upsampling", "FeedForward",
    "Step", "Sigmoid", "Tanh", "Hardtanh", "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU",
    "GELU", "SiLU", "Swish", "Mish", "Softplus", "Softsign", "Hardsigmoid", "Hardswish", "LogSigmoid",
    "GLU", "ReGLU", "GEGLU", "SwiGLU", "BilinearGLU",
    "interpolate", "pixel_shuffle", "pixel_unshuffle", "conv_transpose2d", "max_unpool2d", "icnr_",
    "Upsample", "PixelShuffle", "PixelUnshuffle", "SubPixelConv2d", "ResizeConv2d",
]
