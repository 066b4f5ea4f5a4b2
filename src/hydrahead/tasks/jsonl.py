"""RULER's JSONL format: one object per line with `index`, `input`, `outputs`, `length` and, in recent
RULER versions, `answer_prefix` (appended to the input before generation)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .base import Sample, TaskError
from .ruler import length_bucket, length_from_path, ruler_budget, task_from_path

_KNOWN = {"index", "input", "outputs", "length", "answer_prefix", "task", "depth"}


def read_jsonl(path: str | os.PathLike, task: str = "") -> list[Sample]:
    """The samples of a RULER-format file, every field checked (a bad line is named, not a traceback later).
    Files made by RULER's scripts get the task from their folder, RULER's answer budget and a length bucket."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"data file {path} does not exist")
    default_task = task or task_from_path(path)
    run_length = length_from_path(path)
    samples = []
    with path.open("rb") as f:  # bytes, so that a line that is not UTF-8 is named by its number
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TaskError(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
            if line.strip():
                samples.append(_sample(_object(line, where), where, len(samples), default_task, run_length))
    if not samples:
        raise TaskError(f"{path}: no samples")
    return samples


def _object(line: str, where: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise TaskError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("input", "outputs") if k not in obj]
    if missing:
        raise TaskError(f"{where}: missing {' and '.join(repr(k) for k in missing)}")
    return obj


def _field(obj: dict, key: str, kinds: tuple[type, ...], what: str, where: str, default=None):
    """obj[key] if it is one of `kinds` (bool is no integer here), else an error naming the line and value."""
    value = obj.get(key, default)
    if value is None or (isinstance(value, kinds) and not isinstance(value, bool)):
        return value
    raise TaskError(f"{where}: {key!r} must be {what}, got {value!r}")


def _sample(obj: dict, where: str, position: int, default_task: str, run_length: int | None) -> Sample:
    outputs = obj["outputs"]
    if isinstance(outputs, str):
        outputs = [outputs]
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs):
        raise TaskError(f"{where}: 'outputs' must be a non-empty list of strings")
    text = _field(obj, "input", (str,), "a string", where)
    if text is None:
        raise TaskError(f"{where}: 'input' must be a string, got null")
    index = _field(obj, "index", (int,), "an integer", where, position)
    length = _field(obj, "length", (int,), "an integer", where, 0) or 0
    if length < 0:
        raise TaskError(f"{where}: 'length' must not be negative, got {length}")
    name = _field(obj, "task", (str,), "a string", where) or default_task
    for key in ("max_length", "tokens_to_generate"):  # ours: they group and size the generation
        value = _field(obj, key, (int,), "a positive integer", where)
        if value is not None and value < 1:
            raise TaskError(f"{where}: {key!r} must be a positive integer, got {value}")
    extra = {k: v for k, v in obj.items() if k not in _KNOWN}
    # the columns of the table: our files say the length they were fitted to; RULER's, the run's folder
    # (<length>/data/<task>/), else each sample's own count rounded up to a standard length
    extra.setdefault("max_length", run_length or length_bucket(length))
    budget = ruler_budget(name)
    if budget is not None:  # RULER's answer budget for its tasks, unless the file says otherwise
        extra.setdefault("tokens_to_generate", budget)
    return Sample(
        index=index,
        input=text,
        outputs=outputs,
        length=length,
        answer_prefix=_field(obj, "answer_prefix", (str,), "a string", where) or "",
        task=name,
        depth=_field(obj, "depth", (int, float), "a number", where),
        extra=extra,
    )


def write_jsonl(samples: list[Sample], path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s.to_json(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
