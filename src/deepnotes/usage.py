"""Command-line mistakes: the one error type every `deepnotes` subcommand raises for them.

The top-level command prints a UsageError as one line, ``deepnotes <command>: <message>``,
and exits 2, with no traceback; domain commands (``deepnotes diffusion ...``) raise it too.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["UsageError", "writable_folder"]


class UsageError(Exception):
    """A mistake in the command line: message to stderr, exit 2."""


def writable_folder(path: Path, flag: str) -> Path:
    """path as a writable folder (created if missing), checked before any work; else a UsageError."""
    from .files import ensure_writable_dir

    try:
        return ensure_writable_dir(path, flag)
    except ValueError as err:
        raise UsageError(str(err)) from None
