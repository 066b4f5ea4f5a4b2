"""Atomic training checkpoints: the weights, the optimizer state and the step, in one directory that
is replaced in a single rename, so a kill at any moment leaves either the old or the new checkpoint.

The weights and optimizer state are the full (unsharded) ones, keyed by parameter name, gathered with
torch.distributed.checkpoint's state-dict helpers: one format for a single process, DDP and FSDP
(rank 0 writes it; every process reads it whole and keeps its part)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .config import TransferConfig, TransferError

FORMAT = 2  # 2: full state dicts keyed by parameter name (1, before FSDP: the optimizer's own numbering)
# what must not change between a run and its resumption, or the resumed run would train another model
FIXED = ("stage", "teacher", "plan", "init", "seq_len", "batch_size", "seed", "mixture", "options")


def has_checkpoint(work: Path) -> bool:
    return (Path(work) / "checkpoint" / "state.json").is_file()


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def save_checkpoint(work: Path, model, optimizer, step: int, config: TransferConfig, write: bool = True) -> None:
    """Every process must call this (under FSDP gathering the weights is collective); only `write` writes."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if not write:
        return
    seen: set[int] = set()
    for name, tensor in weights.items():  # tied weights share storage, which safetensors refuses: store a copy
        if tensor.data_ptr() in seen:
            weights[name] = tensor.clone()
        seen.add(tensor.data_ptr())
    work = Path(work)
    tmp, final, old = work / "checkpoint.tmp", work / "checkpoint", work / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
    torch.save(optim, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "format": FORMAT, "config": config.to_dict()}))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(work: Path, model, optimizer, config: TransferConfig, trim_log: bool = True) -> int:
    """Restore the model and optimizer in place (after any DDP / FSDP wrapping: every process reads the
    full state and keeps its part); returns the step to continue from."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_state_dict

    ckpt = Path(work) / "checkpoint"
    try:
        state = json.loads((ckpt / "state.json").read_text())
        saved = state["config"]
    except (OSError, ValueError, KeyError) as e:
        raise TransferError(f"checkpoint {ckpt} is corrupt ({e}); delete it to start over") from None
    if state.get("format") != FORMAT:
        raise TransferError(f"checkpoint {ckpt} was written by an older hydrahead (format {state.get('format', 1)}, "
                            f"this one reads {FORMAT}); delete it to start the stage over")
    changed = [k for k in FIXED if saved.get(k) != getattr(config, k)]
    if changed:
        k = changed[0]
        raise TransferError(
            f"the checkpoint in {ckpt} was made with {k}={saved.get(k)!r}, this run has {k}={getattr(config, k)!r}; "
            "resume with the same settings, or use another out directory"
        )
    try:
        set_state_dict(model, optimizer, model_state_dict=load_file(str(ckpt / "model.safetensors")),
                       optim_state_dict=torch.load(ckpt / "optimizer.pt", weights_only=True), options=_options())
    except Exception as e:  # noqa: BLE001 - any failure here means the checkpoint cannot be trusted
        raise TransferError(f"checkpoint {ckpt} is corrupt or incomplete ({e}); delete it to start over") from None
    step = int(state["step"])
    log = Path(work) / "log.jsonl"
    if trim_log and log.is_file():  # steps logged after the checkpoint will be run again: drop them
        rows = [line for line in log.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        log.write_text("".join(row + "\n" for row in rows))
    return step
