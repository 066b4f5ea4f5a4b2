"""The software a result was made with, for `--version` and the reports."""

from __future__ import annotations

import platform


def software_versions() -> dict[str, str]:
    """hydrahead's, torch's, transformers' and python's versions, read from the installed packages'
    metadata: importing torch only to print its version would take seconds."""
    from importlib import metadata

    from . import __version__

    versions = {"hydrahead": __version__}
    for name in ("torch", "transformers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def versions_line() -> str:
    v = software_versions()
    return f"hydrahead {v['hydrahead']}, torch {v['torch']}, transformers {v['transformers']}, python {v['python']}"
