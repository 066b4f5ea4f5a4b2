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

from ..resume import check_resume, file_digest, model_digest, nested_tensors, trim_log, weights_problem
from .config import TransferConfig, TransferError

FORMAT = 2  # 2: full state dicts keyed by parameter name (1, before FSDP: the optimizer's own numbering)
# what must not change between a run and its resumption, or the resumed run would train another model
# on other data (teacher, plan and init are compared by contents)
FIXED = ("stage", "teacher", "plan", "init", "seq_len", "batch_size", "seed", "mixture", "options")
# the optimizer and its schedule (which depends on steps): a change is refused unless asked for by name
CHANGEABLE = ("steps", "lr", "warmup", "min_lr_ratio", "weight_decay", "grad_clip", "kl_weight", "ce_weight",
              "temperature", "head_weight")
# micro_batch, parallel, activation_checkpointing, checkpoint_every, max_minutes and out do not change what is
# trained


def run_digests(config: TransferConfig) -> dict[str, str]:
    """sha256 of the run's inputs by contents: the teacher, the plan file, the init hybrid."""
    digests = {"teacher": model_digest(config.teacher), "plan": config.plan and file_digest(config.plan),
               "init": config.init and model_digest(config.init)}
    return {k: v for k, v in digests.items() if v}


def has_checkpoint(work: Path) -> bool:
    return (Path(work) / "checkpoint" / "state.json").is_file()


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def save_checkpoint(work: Path, model, optimizer, step: int, config: TransferConfig, write: bool = True,
                    meta: dict | None = None) -> None:
    """Every process must call this (under FSDP gathering the weights is collective); only `write` writes.
    `meta` (the run's input digests, settings changed on resume) is kept in state.json. The caller checks
    that the weights are finite first (`weights_problem`): a diverged model is never a checkpoint."""
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
    state = {"step": step, "format": FORMAT, "config": config.to_dict(), **(meta or {})}
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_step(work: Path) -> int | None:
    """The step of the checkpoint in `work`, if there is a readable one."""
    try:
        return int(json.loads((Path(work) / "checkpoint" / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_checkpoint(work: Path, model, optimizer, config: TransferConfig, trim: bool = True,
                    digests: dict | None = None, allowed=()) -> tuple[int, list[dict]]:
    """Restore the model and optimizer in place (after any DDP / FSDP wrapping: every process reads the
    full state and keeps its part); returns the step to continue from and the settings changed on resume
    so far ([{"step": ..., "changed": {key: [old, new]}}]). `allowed`: settings that may differ on purpose."""
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
    step = int(state["step"])
    saved = {"head_weight": 0.0, **saved}  # checkpoints from before head_weight trained without it
    # contents, not paths: an edited plan is another run; the same plan by another path is not
    changes = check_resume(ckpt, step, saved, config.to_dict(), FIXED, CHANGEABLE, allowed, TransferError,
                           state.get("digests"), digests)
    try:
        weights = load_file(str(ckpt / "model.safetensors"))
        optim = torch.load(ckpt / "optimizer.pt", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the checkpoint cannot be trusted
        raise TransferError(f"checkpoint {ckpt} is corrupt or incomplete ({e}); delete it to start over") from None
    problem = weights_problem(weights.items()) or weights_problem(nested_tensors(optim), limit=None)
    if problem:  # written before checkpoints were checked, or damaged since
        raise TransferError(f"checkpoint {ckpt} is unusable: {problem}; delete it to start over")
    try:
        set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim, options=_options())
    except Exception as e:  # noqa: BLE001 - any failure here means the checkpoint cannot be trusted
        raise TransferError(f"checkpoint {ckpt} is corrupt or incomplete ({e}); delete it to start over") from None
    if trim:  # steps logged after the checkpoint will run again: drop them
        trim_log(Path(work) / "log.jsonl", step)
    history = list(state.get("changes", []))
    if changes:
        history.append({"step": step, "changed": changes})
    return step, history
