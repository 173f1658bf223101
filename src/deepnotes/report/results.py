"""results.json: the one machine-readable record of a run, checked against a JSON Schema."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..files import atomic_write

__all__ = ["SCHEMA_PATH", "load_schema", "validate_results", "write_results", "load_results", "json_safe"]

SCHEMA_PATH = Path(__file__).with_name("results.schema.json")


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def json_safe(value: Any) -> Any:
    """Plain JSON: tensors and numpy scalars become numbers, inf/NaN become null."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def validate_results(doc: dict) -> None:
    """Raises ValueError naming the first place where doc breaks the schema."""
    import jsonschema

    try:
        jsonschema.validate(doc, load_schema())
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        raise ValueError(f"results.json does not match the schema at {where}: {err.message}") from None


def write_results(doc: dict, out_dir: Path) -> Path:
    """Validates, then writes out_dir/results.json atomically."""
    doc = json_safe(doc)
    validate_results(doc)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2)), fsync=False)


def load_results(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results.json in {run_dir}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    validate_results(doc)
    return doc
