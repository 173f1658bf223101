"""Building the C++ kernels (fused Adam, the dense attention tile step) on first use.

torch.utils.cpp_extension compiles a source once per machine into
``$XDG_CACHE_HOME/deepnotes/ext/<key>`` (``~/.cache`` by default). The key hashes what the
binary depends on: the source, the flags, the torch and Python versions and the CPU (the
kernels use -march=native, so a cached build must not move to another CPU). A cached load
takes milliseconds. Each kernel's module decides what a failed build falls back to.
"""
from __future__ import annotations

import hashlib
import os
import platform
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

__all__ = ["cpu_signature", "cache_root", "build_key", "build", "summarize_build_error", "load_once"]


def cpu_signature() -> str:
    """What -march=native compiles for: the CPU's model and flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() or platform.machine()


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepnotes" / "ext"


def build_key(source: bytes, flags: Sequence[str], cpu: str) -> str:
    """The cache key of a build: source, flags, torch and Python versions, the CPU."""
    parts = [source, " ".join(flags).encode(), torch.__version__.encode(), platform.python_version().encode(),
             cpu.encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def build(name: str, source: Path, key: str, cflags: Sequence[str], ldflags: Sequence[str]) -> dict:
    """Compiles (or loads the cached) ``source`` as extension ``{name}_{key}``, registering its torch.ops;
    returns {"build_seconds", "cached", "build_dir"}. Raises whatever the build raises."""
    from torch.utils import cpp_extension

    build_dir = cache_root() / key
    build_dir.mkdir(parents=True, exist_ok=True)
    lock = build_dir / "lock"  # cpp_extension waits forever on the lock of a build that was killed
    if lock.exists() and time.time() - lock.stat().st_mtime > 600:
        lock.unlink(missing_ok=True)
    full_name = f"{name}_{key}"
    cached = (build_dir / f"{full_name}.so").exists()
    start = time.perf_counter()
    cpp_extension.load(name=full_name, sources=[str(source)], extra_cflags=list(cflags), extra_ldflags=list(ldflags),
                       build_directory=str(build_dir), is_python_module=False, verbose=False)
    return {"build_seconds": time.perf_counter() - start, "cached": cached, "build_dir": str(build_dir)}


def summarize_build_error(err: Exception) -> str:
    """The telling line of a failed build (cpp_extension's message starts with whole command lines)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    telling = [ln for ln in lines[1:] if any(w in ln.lower() for w in ("error", "not found", "no such"))
               and not ln.startswith(("FAILED", "ninja:"))]
    return f"{type(err).__name__}: {(telling or lines or [''])[0][:300]}"


def load_once(state: dict, lock: threading.Lock, build_fn: Callable[[], Any],
              fallback_message: Callable[[str], str]) -> Any | None:
    """state["kernel"], built by build_fn() on the first call; None if the build fails, which warns once
    (fallback_message(error) says what runs instead) and records the error in state["error"]."""
    with lock:
        if state["tried"]:
            return state["kernel"]
        state["tried"] = True
        try:
            state["kernel"] = build_fn()
        except Exception as err:  # no compiler, no ninja, a failed compile: all mean "use the fallback"
            state["error"] = summarize_build_error(err)
            warnings.warn(fallback_message(state["error"]), RuntimeWarning, stacklevel=3)
        return state["kernel"]
