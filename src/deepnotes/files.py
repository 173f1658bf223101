"""Writing files so that a reader never sees half of one: write a temporary file beside the target,
flush it to disk, rename it over the target (atomic on POSIX).

One helper for results.json, checkpoints and the artifact store. The file gets the mode any new file
of the user's gets (0666 less the umask), not mkstemp's private 0600, so a results folder or a cache
shared with a group stays readable by it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "default_file_mode", "ensure_writable_dir"]


def default_file_mode() -> int:
    """0666 less the process umask: the mode open() would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], fsync: bool = True) -> Path:
    """Calls ``write(tmp_path)`` to fill a temporary file beside ``path``, then renames it to ``path``.

    On any failure the temporary file is removed and the target is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """`path` as a folder this process can write into, created if missing; else a ValueError naming `what`.

    Proved by writing a probe file: permission bits alone do not tell (root, read-only mounts). Used to
    find an unusable output folder before any work, not at the first save."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"{what} {str(path)!r} cannot be written: {err.strerror or err}") from None
    return path
