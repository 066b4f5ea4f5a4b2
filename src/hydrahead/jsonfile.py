"""Reading and writing the small JSON files the tools exchange (plans, scores, progress files)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_json(path: str | os.PathLike, what: str, error: type[Exception]):
    """The parsed contents of `path`, or `error` naming the file as `what` ("plan file", ...)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:  # a truncated file (a kill mid-copy, a full disk) ends up here too
        raise error(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None


def write_json_atomic(path: Path, data) -> None:
    """Write then rename, so an interrupted write never leaves a truncated file behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
