"""Package attributes imported on first use: torch and transformers are heavy, and the command line's
parser (and --help) needs neither."""

from __future__ import annotations

import importlib


def lazy_getattr(package: str, table: dict[str, str]):
    """A module `__getattr__` that imports `name` from `package.<table[name]>` when first asked for."""

    def __getattr__(name: str):
        if name in table:
            return getattr(importlib.import_module(f".{table[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
