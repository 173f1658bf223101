"""A small store of trained models, so that notes share what one of them trained.

A trained module is saved as two files: its weights as safetensors (tensors
only; loading never unpickles anything) and a JSON recipe, the description of
how it was made, plus whatever the training reported (curves, final metrics).
The files are named by a hash of what determines the weights:

    key = sha256(recipe name, config, seed, data fingerprint, deepnotes version)

so "the VP score model for 8 gaussians at quick scale, seed 0" is trained once
and found again by any note, in this run or the next. Change any of those and
the key changes: a stale model is never reused. A corrupt or incomplete entry
(unreadable JSON, a checksum that does not match, tensors that do not fit the
module) is retrained with a warning.

    store = ArtifactStore(Path("~/.cache/deepnotes/artifacts").expanduser())
    recipe = Recipe("char-lm", config={"d_model": 48, "activation": "swiglu"}, seed=0, data=corpus_digest)
    model, info = store.get(recipe, build=lambda: TinyLM(...), train=lambda m: {"val_loss": train_lm(m)})
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .files import atomic_write

__all__ = ["Recipe", "ArtifactStore", "TiedView", "default_cache_dir", "fingerprint"]


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/deepnotes/artifacts, else ~/.cache/deepnotes/artifacts."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deepnotes" / "artifacts"


def fingerprint(*parts: Any) -> str:
    """A short hex digest of JSON-able parts or tensors: a data fingerprint for a Recipe."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):  # its dtype, shape and bytes
            t = part.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]



class TiedView(nn.Module):
    """The store's view of a module whose state holds one tensor under two names (an output
    embedding tied to the input embedding, as in transformers' tied LMs): safetensors refuses
    shared tensors, so the view saves each tensor once and loading fills every name. Its state
    dict has the inner module's own keys (no prefix)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def _aliases(self) -> set[str]:
        seen, aliases = set(), set()
        for name, t in self.inner.state_dict().items():
            if t.data_ptr() in seen:
                aliases.add(name)
            else:
                seen.add(t.data_ptr())
        return aliases

    def state_dict(self, *args, **kwargs):
        aliases = self._aliases()
        return {k: v for k, v in self.inner.state_dict().items() if k not in aliases}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = self.inner.load_state_dict(state_dict, strict=False)
        missing = set(result.missing_keys) - self._aliases()
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"state_dict does not fit the model: missing {sorted(missing)}, unexpected "
                               f"{sorted(result.unexpected_keys)}")
        return result

@dataclass(frozen=True)
class Recipe:
    """What determines a trained module's weights."""

    name: str  # what is trained, e.g. "char-lm" or "vp-score-8gaussians"
    config: dict = field(default_factory=dict)  # architecture and training settings (JSON-able)
    seed: int = 0
    data: str = ""  # a fingerprint of the training data (see fingerprint())

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"Recipe name must be non-empty letters, digits, '-', '_' or '.', got {self.name!r}")
        try:
            json.dumps(self.config, sort_keys=True)
        except TypeError as err:
            raise TypeError(f"Recipe config must be JSON-able: {err}") from None

    def to_json(self) -> dict:
        from . import __version__

        return {"name": self.name, "config": self.config, "seed": self.seed, "data": self.data,
                "deepnotes": __version__}

    @property
    def key(self) -> str:
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:20]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ArtifactStore:
    """Trained modules on disk, keyed by their Recipe.

    Args:
        root: the folder the entries live in (created on first save).
        enabled: False retrains every time and stores nothing (``--no-cache``).
    """

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled
        self.hits = 0  # entries loaded
        self.trained = 0  # entries trained (missing, corrupt or disabled)

    def __repr__(self) -> str:
        return f"ArtifactStore({str(self.root)!r}, enabled={self.enabled})"

    def counts(self) -> tuple[int, int]:
        """(hits, trained) so far, to pass to add_counts after a batch of runs in other processes."""
        return self.hits, self.trained

    def add_counts(self, before: tuple[int, int], loaded: list[bool]) -> None:
        """Counts runs that used this store in worker processes (each on its own copy of it): `loaded`
        says per run whether it loaded; runs made in this process since `before` are not counted twice."""
        hits, trained = self.hits - before[0], self.trained - before[1]
        self.hits += sum(loaded) - hits
        self.trained += len(loaded) - sum(loaded) - trained

    def paths(self, recipe: Recipe) -> tuple[Path, Path]:
        stem = self.root / f"{recipe.name}-{recipe.key}"
        return stem.with_suffix(".safetensors"), stem.with_suffix(".json")

    def work_dir(self, recipe: Recipe) -> Path | None:
        """The folder an entry's training keeps its checkpoints in until the entry is saved, so a
        long training that is interrupted resumes there (fit's checkpoint_dir); None when disabled."""
        return self.root / "work" / f"{recipe.name}-{recipe.key}" if self.enabled else None

    def load(self, recipe: Recipe, module: nn.Module) -> dict | None:
        """Loads the entry's weights into module and returns its info, or None when there is
        no usable entry (a corrupt one is reported with a warning)."""
        if not self.enabled:
            return None
        weights, meta = self.paths(recipe)
        if not meta.is_file():
            return None
        try:
            from safetensors.torch import load_file

            record = json.loads(meta.read_text())
            if record.get("recipe") != json.loads(json.dumps(recipe.to_json())):
                raise ValueError("its recipe does not match the one asked for")
            if _sha256(weights) != record.get("sha256"):
                raise ValueError("the weights' checksum does not match the recipe's")
            module.load_state_dict(load_file(str(weights)), strict=True)
        except Exception as err:  # any failure to read an entry means: train it again
            warnings.warn(f"artifact store: entry {meta.name} is unusable ({type(err).__name__}: {err}); "
                          "retraining it", RuntimeWarning, stacklevel=2)
            return None
        self.hits += 1
        return record.get("info", {})

    def save(self, recipe: Recipe, module: nn.Module, info: dict | None = None) -> Path:
        """Writes weights then recipe, each atomically: an entry is complete once its JSON exists."""
        from safetensors.torch import save_file

        weights, meta = self.paths(recipe)
        self.root.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        atomic_write(weights, lambda tmp: save_file(state, tmp))
        record = {"recipe": recipe.to_json(), "sha256": _sha256(weights), "info": info or {}}
        atomic_write(meta, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1, sort_keys=True)))
        return weights

    def get(self, recipe: Recipe, build: Callable[[], nn.Module],
            train: Callable[[nn.Module], dict | None]) -> tuple[nn.Module, dict]:
        """The trained module for recipe: loaded when stored, else built, trained and stored.

        ``build()`` makes the untrained module (the same architecture the recipe
        describes); ``train(module)`` trains it in place and returns a JSON-able
        dict of what the caller wants back on a later load (curves, metrics).
        """
        module = build()
        info = self.load(recipe, module)
        if info is not None:
            return module, info
        info = train(module) or {}
        json.dumps(info)  # fail now, not on a later load, when info is not JSON-able
        self.trained += 1
        if self.enabled:
            self.save(recipe, module, info)
            shutil.rmtree(self.work_dir(recipe), ignore_errors=True)  # the entry replaces its checkpoints
        return module, info
