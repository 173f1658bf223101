"""Benchmarks: scripts in benchmarks/ that run deepnotes and its peer in one process.

BENCHMARKS maps a name to its script; `deepnotes bench NAME` runs it with the
same interpreter. Each script prints a table and writes JSON with the ratios
to benchmarks/results/NAME.json. The helpers here keep timing uniform.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .measure import median_time

__all__ = ["BENCHMARKS", "BENCH_DIR", "RESULTS_DIR", "median_time", "write_result", "run_benchmark"]

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"

BENCHMARKS: dict[str, str] = {
    "sa": "sa.py",
    "optim": "optim.py",
    "amp": "amp.py",
    "upsampling": "upsampling.py",
    "attention": "attention.py",
    "attention-gpu": "attention_gpu.py",
    "diffusion": "diffusion.py",
    "medusa": "medusa.py",
    "video": "video.py",
}


def write_result(name: str, payload: dict, path: Path | None = None) -> Path:
    """Writes the benchmark's JSON, with the environment it ran in."""
    path = Path(path) if path else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
        **payload,
    }
    path.write_text(json.dumps(payload, indent=2))
    return path


def run_benchmark(name: str, quick: bool = False, out: Path | None = None) -> int:
    script = BENCH_DIR / BENCHMARKS[name]
    if not script.is_file():
        raise FileNotFoundError(f"benchmark script {script} not found (benchmarks/ ships with the repository)")
    cmd = [sys.executable, str(script)] + (["--quick"] if quick else []) + (["--out", str(out)] if out else [])
    return subprocess.run(cmd).returncode
