"""What a training run must match to resume from a checkpoint, and what a checkpoint must hold to be
trusted; shared by the transfer stages and the teacher trainer.

A run resumes only if every setting that shapes it is unchanged: otherwise the result would mix two
runs and be reported as one. Files and model directories are compared by their contents (sha256), not
their path string, so the same plan given by another path resumes and an edited plan does not. A setting
may be changed on purpose (a lower learning rate after a divergence, more steps) by naming it; the change
is then recorded with the step it took effect at, and ends up in the run's summary.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch

# |weight| beyond this is a diverged run, not a trained model (a healthy LM's weights are O(1)-O(100);
# a run blown up by a huge learning rate reaches 1e30 before its loss turns NaN)
ABSURD = 1e6


def file_digest(path: str | os.PathLike) -> str | None:
    """sha256 of a file's bytes (None if it is missing)."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_files(path: Path) -> list[Path]:
    """What makes a model directory the model it is: config, weights, tokenizer (not its README or plots)."""
    names = {"config.json", "merges.txt", "vocab.json", "special_tokens_map.json"}
    return sorted(p for p in path.iterdir() if p.is_file() and (
        p.name in names or p.name.startswith("tokenizer") or p.suffix in (".safetensors", ".bin", ".model")))


def model_digest(path: str | os.PathLike) -> str | None:
    """sha256 over the names and contents of a model directory's files (None if it is not a directory)."""
    path = Path(path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in _model_files(path):
        digest.update(file.name.encode() + b"\0" + bytes.fromhex(file_digest(file)))
    return digest.hexdigest()


def _show(key: str, value, digests: dict) -> str:
    shown = f"{key}={value!r}"
    return f"{shown} (sha256 {digests[key][:12]})" if digests.get(key) else shown


def changed_settings(saved: dict, current: dict, keys: Iterable[str], saved_digests: dict | None = None,
                     current_digests: dict | None = None) -> list[str]:
    """The keys whose setting differs. A key with a digest on both sides (a file or model directory) is
    compared by contents; one without (an older checkpoint) by its value."""
    saved_digests, current_digests = saved_digests or {}, current_digests or {}
    changed = []
    for key in keys:
        if key in saved_digests and key in current_digests:
            if saved_digests[key] != current_digests[key]:
                changed.append(key)
        elif saved.get(key) != current.get(key):
            changed.append(key)
    return changed


def check_resume(where, step: int, saved: dict, current: dict, fixed: Iterable[str], changeable: Iterable[str],
                 allowed: Iterable[str], error: type[Exception], saved_digests: dict | None = None,
                 current_digests: dict | None = None, change_flag: str = "--change_on_resume") -> dict:
    """Refuse to resume the checkpoint `where` (at `step`) with settings other than those it was made with,
    naming each difference as old and new value; a `changeable` setting named in `allowed` may differ on
    purpose. Returns those changes {key: [old, new]}. Fewer steps than the checkpoint has done is refused."""
    if current.get("steps") is not None and current["steps"] < step:
        raise error(f"the checkpoint in {where} is at step {step}, beyond this run's steps={current['steps']}; "
                    "give at least that many steps, or use another out directory")
    changeable = tuple(changeable)
    changed = changed_settings(saved, current, (*fixed, *changeable), saved_digests, current_digests)
    refused = [k for k in changed if k not in changeable or k not in set(allowed)]
    if refused:
        old = ", ".join(_show(k, saved.get(k), saved_digests or {}) for k in refused)
        new = ", ".join(_show(k, current.get(k), current_digests or {}) for k in refused)
        may = [k for k in refused if k in changeable]
        hint = f"; {', '.join(may)} may be changed on purpose with {change_flag} {','.join(may)}" if may else ""
        raise error(f"the checkpoint in {where} was made with {old}; this run has {new}; resume with the same "
                    f"settings, or use another out directory{hint}")
    return {k: [saved.get(k), current.get(k)] for k in changed}


def parse_changes(spec: str | None, changeable: Iterable[str], error: type[Exception],
                  flag: str = "--change_on_resume") -> set[str]:
    """'lr,steps' -> {'lr', 'steps'}, each checked to be a setting that may change mid-run."""
    names = {n.strip() for n in (spec or "").split(",") if n.strip()}
    unknown = sorted(names - set(changeable))
    if unknown:
        raise error(f"{flag} cannot change {unknown[0]!r}; settings that may change mid-run: {', '.join(changeable)}")
    return names


def weights_problem(named: Iterable[tuple[str, torch.Tensor]], limit: float | None = ABSURD) -> str | None:
    """None if every tensor is finite (and, with `limit`, below it in magnitude), else what is wrong with the
    first that is not. Sharded tensors (FSDP's DTensors) are checked on this process's shard."""
    for name, tensor in named:
        if not isinstance(tensor, torch.Tensor):
            continue
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        local = local.detach()
        if local.numel() == 0 or not local.is_floating_point():
            continue
        if not bool(torch.isfinite(local).all()):
            return f"{name} holds NaN or inf"
        peak = float(local.abs().max())
        if limit is not None and peak > limit:
            return f"{name} reaches {peak:.3g}, beyond {limit:g}"
    return None


def nested_tensors(state, prefix: str = "") -> Iterable[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor in a nested dict / list (an optimizer state dict)."""
    if isinstance(state, torch.Tensor):
        yield prefix, state
    elif isinstance(state, dict):
        for k, v in state.items():
            yield from nested_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            yield from nested_tensors(v, f"{prefix}[{i}]")


def trim_log(path: Path, step: int) -> None:
    """Keep the log's records up to `step` (0: none): the steps after the checkpoint will run again, and a
    line cut short by a kill is dropped."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    path.write_text("".join(row + "\n" for row in kept))
