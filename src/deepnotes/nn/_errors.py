"""Exceptions that satisfy both conventions: the project's ValueError and torch's own type.

torch raises RuntimeError for a bad shape (F.glu on an odd dimension, F.prelu
with mismatched channels, interpolate to an empty size) and NotImplementedError
for an input rank a mode does not support. deepnotes raises ValueError at the
boundary. These subclasses are both, so `except ValueError` and code written
against torch's exception types keep working.
"""
from __future__ import annotations

__all__ = ["InvalidShapeError", "UnsupportedInputError", "DimOutOfRangeError"]


class InvalidShapeError(ValueError, RuntimeError):
    """A shape or size torch rejects with RuntimeError."""


class UnsupportedInputError(ValueError, NotImplementedError):
    """A rank/mode combination torch rejects with NotImplementedError."""


class DimOutOfRangeError(ValueError, IndexError):
    """A `dim` argument outside the tensor's dimensions, which torch rejects with IndexError."""
