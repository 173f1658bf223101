"""Lazy package exports: `import deepnotes.video` (or diffusion, medusa) stays cheap.

A domain package lists its public names per submodule; a name is imported from its module the
first time it is used (then cached in the package's namespace), and a submodule that is missing
or slow to import costs nothing until one of its names is asked for:

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"io": ["decode_video"], ...})
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_exports(package: str, exports: dict[str, list[str]]) -> tuple[Callable, Callable, list[str]]:
    """(__getattr__, __dir__, __all__) for `package`, whose submodules (keys, relative, dotted allowed)
    export the names listed. A submodule name that is not also an exported name is served as the module."""
    where = {name: module for module, names in exports.items() for name in names}
    submodules = {module for module in exports if "." not in module and module not in where}

    def __getattr__(name: str):
        if name in submodules:
            return importlib.import_module(f".{name}", package)
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)
