"""Atomic training checkpoints: the weights, the optimizer state and the step, in one directory that
is replaced in a single rename, so a kill at any moment leaves either the old or the new checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .config import TransferConfig, TransferError

# what must not change between a run and its resumption, or the resumed run would train another model
FIXED = ("stage", "teacher", "plan", "init", "seq_len", "batch_size", "seed", "mixture", "options")


def has_checkpoint(work: Path) -> bool:
    return (Path(work) / "checkpoint" / "state.json").is_file()


def save_checkpoint(work: Path, model, optimizer, step: int, config: TransferConfig) -> None:
    from safetensors.torch import save_model

    work = Path(work)
    tmp, final, old = work / "checkpoint.tmp", work / "checkpoint", work / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # tied weights are stored once
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": config.to_dict()}))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(work: Path, model, optimizer, config: TransferConfig, trim_log: bool = True) -> int:
    """Restore the model and optimizer in place; returns the step to continue from."""
    from safetensors.torch import load_model

    ckpt = Path(work) / "checkpoint"
    try:
        state = json.loads((ckpt / "state.json").read_text())
        saved = state["config"]
    except (OSError, ValueError, KeyError) as e:
        raise TransferError(f"checkpoint {ckpt} is corrupt ({e}); delete it to start over") from None
    changed = [k for k in FIXED if saved.get(k) != getattr(config, k)]
    if changed:
        k = changed[0]
        raise TransferError(
            f"the checkpoint in {ckpt} was made with {k}={saved.get(k)!r}, this run has {k}={getattr(config, k)!r}; "
            "resume with the same settings, or use another out directory"
        )
    try:
        load_model(model, str(ckpt / "model.safetensors"))
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    except Exception as e:  # noqa: BLE001 - any failure here means the checkpoint cannot be trusted
        raise TransferError(f"checkpoint {ckpt} is corrupt or incomplete ({e}); delete it to start over") from None
    step = int(state["step"])
    log = Path(work) / "log.jsonl"
    if trim_log and log.is_file():  # steps logged after the checkpoint will be run again: drop them
        rows = [line for line in log.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        log.write_text("".join(row + "\n" for row in rows))
    return step
