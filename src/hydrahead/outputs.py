"""Output paths checked before any work: a wrong `--output_path` or `--out` is found in a second, not
after an hour of evaluation or training, and a model is never written over its own source."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .atomic import WriteError


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_dir_writable(path: str | os.PathLike, flag: str) -> Path:
    """`path` is, or can be created as, a folder we can write in (probed by making and removing a folder
    in its nearest existing ancestor; nothing is left behind)."""
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        where = "is a file" if existing == Path(os.path.abspath(path)) else f"is under {existing}, a file"
        raise WriteError(f"{flag} {path} {where}, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hydrahead-probe-", dir=existing))
    except OSError as e:
        raise WriteError(f"{flag} {path} cannot be written ({e.strerror} in {existing})") from None
    return path


def check_file_writable(path: str | os.PathLike, flag: str, example: str) -> Path:
    """`path` names a file (not a folder) whose folder we can write in; `example` is a file name to suggest."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{flag} {path} is a folder; give a file name, e.g. {path / example}")
    check_dir_writable(path.parent, flag)
    return path


def _is_hybrid_dir(path: Path) -> bool:
    try:
        return bool(json.loads((path / "config.json").read_text()).get("hydrahead"))
    except (OSError, ValueError, AttributeError):
        return False


def check_model_out(out: str | os.PathLike, source: str | os.PathLike, flag: str = "--out") -> Path:
    """A directory `convert` may write its hybrid to: not the source model, not inside it, not around it, and
    if it exists, empty or a hybrid written before (which is replaced only once the new one is complete)."""
    out, source = Path(out), Path(source)
    out_r, source_r = out.resolve(), source.resolve()
    if out_r == source_r:
        raise WriteError(f"{flag} {out} is the source model {source}; give another directory")
    if source_r in out_r.parents:
        raise WriteError(f"{flag} {out} is inside the source model {source}; give a directory outside it")
    if out_r in source_r.parents:
        raise WriteError(f"{flag} {out} holds the source model {source}; give a directory of its own")
    if out.is_file():
        raise WriteError(f"{flag} {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not _is_hybrid_dir(out):
        raise WriteError(f"{flag} {out} exists and is not a hybrid written by hydrahead; give a new or empty "
                         "directory (only an earlier hybrid is replaced)")
    check_dir_writable(out.parent, flag)
    return out
