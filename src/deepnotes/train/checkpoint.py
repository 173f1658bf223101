"""Checkpoints as one safetensors file, written atomically.

A training state is a nest of dicts and lists holding tensors and plain values
(model weights, optimizer state, scaler, EMA, RNG states, counters). Tensors go
into the safetensors body under their path ("optimizer/state/0/exp_avg"); the
nest itself, with each tensor replaced by a reference, goes into the header's
metadata as JSON, with a sha256 of every tensor's bytes. Nothing is pickled,
so loading never runs code; a truncated file, or one whose tensor bytes changed
(a flipped bit), fails with a CheckpointError naming it and the tensor. Loading
reads the whole file into memory first: the tensors returned are independent of
the file, which may be overwritten or truncated afterwards.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "flatten_state", "unflatten_state"]

_META_KEY = "deepnotes"
_FORMAT = 1


def _digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (its dtype and shape are checked by safetensors itself)."""
    return hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: missing, truncated, corrupt or foreign."""


def flatten_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """(skeleton, tensors): the nest with tensors replaced by {"__tensor__": path}."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, torch.Tensor):
            tensors[path] = x.detach().cpu().contiguous().clone()
            return {"__tensor__": path}
        if isinstance(x, dict):
            if not all(isinstance(k, (str, int)) for k in x):
                raise TypeError(f"checkpoint keys must be str or int at {path or '<root>'}")
            return {"__dict__": [[k, walk(v, f"{path}/{k}" if path else str(k))] for k, v in x.items()]}
        if isinstance(x, (list, tuple)):
            items = [walk(v, f"{path}/{i}") for i, v in enumerate(x)]
            return {"__tuple__": items} if isinstance(x, tuple) else items
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if hasattr(x, "item") and getattr(x, "ndim", None) == 0:  # numpy scalar
            return x.item()
        if hasattr(x, "tolist"):  # numpy array
            return walk(torch.as_tensor(x), path)
        raise TypeError(f"cannot store {type(x).__name__} in a checkpoint (at {path or '<root>'})")

    return walk(obj, prefix), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            if "__tensor__" in x:
                return tensors[x["__tensor__"]]
            if "__tuple__" in x:
                return tuple(walk(v) for v in x["__tuple__"])
            if "__dict__" in x:
                return {k: walk(v) for k, v in x["__dict__"]}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(skeleton)


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Writes state to path atomically: a temp file in the same folder, fsync, rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    skeleton, tensors = flatten_state(state)
    sums = {name: _digest(t) for name, t in tensors.items()}
    metadata = {_META_KEY: json.dumps({"format": _FORMAT, "state": skeleton, "sha256": sums})}
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a save that was killed; one writer per path
        stale.unlink(missing_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def _header(data: bytes) -> dict:
    """The JSON header of a safetensors byte string: 8 bytes little-endian length, then the JSON."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n])


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Reads a checkpoint written by save_checkpoint; CheckpointError if it cannot."""
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = path.read_bytes()  # one read: nothing below aliases the file (no mmap)
    try:
        tensors = load(data)
        metadata = _header(data).get("__metadata__") or {}
    except Exception as err:  # safetensors raises its own error types for bad headers/bodies
        raise CheckpointError(f"checkpoint {path} ({len(data)} bytes) is truncated or corrupt: {err}") from None
    if _META_KEY not in metadata:
        raise CheckpointError(f"checkpoint {path} was not written by deepnotes (no '{_META_KEY}' metadata)")
    try:
        header = json.loads(metadata[_META_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata: {err}") from None
    if header.get("format") != _FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {header.get('format')}, expected {_FORMAT}")
    for name, expected in (header.get("sha256") or {}).items():
        if name in tensors and _digest(tensors[name]) != expected:
            raise CheckpointError(f"checkpoint {path}: tensor {name!r} does not match its checksum "
                                  "(the file changed after it was written)")
    try:
        return unflatten_state(header["state"], tensors)
    except KeyError as err:
        raise CheckpointError(f"checkpoint {path} refers to a missing tensor {err}") from None
