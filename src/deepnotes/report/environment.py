"""What machine and software produced a run, for results.json."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

import deepnotes

__all__ = ["collect_environment", "cpu_model", "git_commit"]

REPO_ROOT = Path(__file__).resolve().parents[3]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """HEAD's commit (with '-dirty' when the tree has changes), or None outside git."""
    try:
        git = ["git", "--no-optional-locks", "-C", str(root)]  # never take the user's .git/index.lock
        head = subprocess.run([*git, "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def collect_environment(device: str, seed: int) -> dict:
    env = {
        "deepnotes": deepnotes.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "device": device,
        "seed": seed,
        "git_commit": git_commit(),
    }
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env
