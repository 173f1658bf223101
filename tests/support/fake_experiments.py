"""Stand-in experiments for the runner's tests. They live in an importable module (tests/support is put
on sys.path by tests/conftest.py) because each note runs in a fresh process that imports its experiment."""
import ctypes
import json
import os
import random
import signal

import numpy as np
import torch

from deepnotes.artifacts import Recipe
from deepnotes.experiments import Check, Result


class Raises:
    slug, title, claim, devices = "adamw", "raises", "it raises", ("cpu",)

    def run(self, ctx):
        ctx.progress(0.5, "about to fail")
        raise RuntimeError("boom in the middle")


class DrawsFromGlobalRngs:
    slug, title, claim, devices = "medusa", "draws", "draws from every global RNG", ("cpu",)

    def run(self, ctx):
        value = random.random() + float(np.random.rand()) + float(torch.rand(()))
        return Result(metrics={"value": value}, checks=[Check("value is finite", value, "<", 10, label="value")],
                      summary="drew")


class Segfaults:
    slug, title, claim, devices = "smld", "segfaults", "crashes the interpreter", ("cpu",)

    def run(self, ctx):
        ctypes.string_at(0)  # reads address 0: SIGSEGV


class KilledByOOM:
    slug, title, claim, devices = "sde-intro", "killed", "is killed as the OOM killer would", ("cpu",)

    def run(self, ctx):
        os.kill(os.getpid(), signal.SIGKILL)


class CountsFinishedNotes:
    """Reads results.json while it runs: how many notes were already written to disk."""

    slug, title, claim, devices = "two-stream", "counts", "sees earlier notes on disk", ("cpu",)

    def run(self, ctx):
        path = ctx.out_dir / "results.json"
        n = len(json.loads(path.read_text())["notes"]) if path.is_file() else 0
        return Result(metrics={"notes_on_disk": n}, checks=[Check("ran", 1, ">=", 1, label="ran")], summary="read")


class RunsOnRequestedDevice:
    slug, title, claim, devices = "score-sde", "device", "supports cuda", ("cpu", "cuda")

    def run(self, ctx):
        return Result(metrics={"on_cuda": float(ctx.device == "cuda")},
                      checks=[Check("ran", 1, ">=", 1, label="ran")], summary=f"ran on {ctx.device}")


class TrainsThroughTheStore:
    """Trains a linear map once per recipe; reports whether this process trained or loaded it."""

    slug, title, claim, devices = "temporal-modeling", "store", "shares a trained model", ("cpu",)

    def run(self, ctx):
        def train(module):
            with torch.no_grad():
                module.weight.fill_(2.0)
                module.bias.fill_(-1.0)
            return {"trained_by": os.getpid()}

        module, info = ctx.artifacts.get(Recipe("fake-linear", {"n": 3}, seed=ctx.seed),
                                         lambda: torch.nn.Linear(3, 1), train)
        return Result(metrics={"loaded": float(ctx.artifacts.hits), "weight": float(module.weight[0, 0]),
                               "trained_by_this_process": float(info["trained_by"] == os.getpid())},
                      checks=[Check("weight", float(module.weight[0, 0]), "<=", 2.0, label="weight")], summary="store")
