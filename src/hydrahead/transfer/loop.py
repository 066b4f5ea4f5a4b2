"""One training loop under all three stages: AdamW with warmup and cosine decay, gradient
accumulation, a progress bar, a metrics log and its plot, atomic checkpoints, resume, and
torch.distributed when launched with torchrun: DDP, or FSDP (fully_shard, a unit per attention and per layer),
gloo on CPU, nccl on GPUs.

A run killed at any point and started again with the same config resumes from its last checkpoint
and ends with the same weights as a run that was never interrupted: the data of a step depends only
on (seed, step), and the checkpoint holds the weights, the optimizer state and the step.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import time
from pathlib import Path

import torch

from ..resume import trim_log, weights_problem
from .checkpoint import checkpoint_step, has_checkpoint, load_checkpoint, run_digests, save_checkpoint
from .config import TransferConfig, TransferError
from .data import packed_batch, shard
from .stages import make_stage


def lr_at(config: TransferConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Distributed:
    """rank / world size from torchrun's environment; a no-op in a plain single process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = "cpu"
        if self.world > 1:
            import torch.distributed as dist

            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if not dist.is_initialized():
                # once per process, destroyed at its exit: a second stage in the same launch (align, then distill
                # from its model) reuses the group, as initialising it again on torchrun's store races the other
                # processes' reads of the first group's addresses (a hang or "connection reset by peer")
                dist.init_process_group(backend)
                atexit.register(_destroy_process_group)
            if backend == "nccl":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                self.device = f"cuda:{local}"
        elif torch.cuda.is_available():
            self.device = "cuda"

    @property
    def main(self) -> bool:
        return self.rank == 0

    def strategy(self, parallel: str) -> str:
        if self.world == 1:
            return "none"
        if parallel == "auto":  # sharding pays where memory is short (GPUs); on CPU a replica is simpler
            return "fsdp" if self.device.startswith("cuda") else "ddp"
        return parallel

    def wrap(self, model, parallel: str):
        strategy = self.strategy(parallel)
        if strategy == "none":
            return model
        if strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            # a unit per attention and per decoder layer, so only one layer's full weights exist at a time;
            # the root keeps the embeddings, the final norm and the head. The attention is a unit of its own
            # because align's loss reads its output directly: FSDP re-gathers a unit's weights for backward
            # only from hooks on that unit's outputs. The modules stay the same objects (FSDP2).
            for layer in model.model.layers:
                fully_shard(layer.self_attn)
                fully_shard(layer)
            return fully_shard(model)
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        # some hybrid parameters (e.g. an unused gate) may get no gradient in a stage
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def any(self, flag: bool) -> bool:
        """True on every process if `flag` is on any (so that all of them stop together)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())


def _destroy_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _models(config: TransferConfig, stage, device: str, with_teacher: bool = True):
    from ..attention import HybridOptions
    from ..convert import convert, is_hybrid
    from ..models import load_model, load_tokenizer
    from ..plan import HeadPlan

    tokenizer = load_tokenizer(config.teacher)
    teacher = load_model(config.teacher, device=device) if stage.needs_teacher and with_teacher else None
    if teacher is not None:
        if is_hybrid(teacher):
            raise TransferError(f"the teacher {config.teacher} is a hybrid; give the original model")
        teacher.requires_grad_(False)
    if config.init is not None:
        student = load_model(config.init, device=device)
        if not is_hybrid(student):
            raise TransferError(f"init {config.init} is not a hybrid (convert the model first, or give a plan)")
    else:
        student = load_model(config.teacher, device=device)
        options = {"logscale_length": getattr(student.config, "max_position_embeddings", 4096), **config.options}
        torch.manual_seed(config.seed)  # the new GDN parameters start the same in every process and every rerun
        student = convert(student, HeadPlan.load(config.plan), HybridOptions(**options), inplace=True)
    return tokenizer, teacher, student


def _last_good(work: Path) -> str:
    step = checkpoint_step(work)
    return f"{work / 'checkpoint'} (step {step})" if step is not None else "(none yet)"


def _diverged(config: TransferConfig, work: Path, what: str) -> TransferError:
    advice = ("run again with a lower --lr and --change_on_resume lr to go on from it" if has_checkpoint(work)
              else "run again with a lower --lr")
    return TransferError(f"{what}; the last good checkpoint is {_last_good(work)}: {advice}")


def train_stage(config: TransferConfig, progress: bool = True, change_on_resume=()) -> Path | None:
    """Run (or resume) one stage in `config.out`; returns the trained hybrid's directory, or None if the
    run stopped early (max_minutes) with a checkpoint to resume from. A checkpoint made with other settings
    is refused, except for those named in `change_on_resume` (recorded in summary.json)."""
    from tqdm import tqdm

    from ..convert import save

    config.check()
    dist = Distributed()
    if config.batch_size % (config.micro_batch * dist.world):
        raise TransferError(
            f"batch_size {config.batch_size} must be a multiple of micro_batch x processes = "
            f"{config.micro_batch} x {dist.world}"
        )
    out = Path(config.out)
    work = out / "training"
    stage = make_stage(config)
    tokenizer, teacher, student = _models(config, stage, dist.device)
    student.requires_grad_(False)
    for p in stage.trainable(student):
        p.requires_grad_(True)
    student.train()
    if config.activation_checkpointing:
        student.activation_checkpointing_enable()
    model = dist.wrap(student, config.parallel)
    params = stage.trainable(student)  # after wrapping: FSDP replaces the parameters with sharded ones
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    step, changes = 0, []
    digests = run_digests(config)
    if has_checkpoint(work):
        step, changes = load_checkpoint(work, model, optimizer, config, trim=dist.main, digests=digests,
                                        allowed=change_on_resume)
    elif dist.main:  # killed before its first checkpoint: those steps run again, so their log lines go
        trim_log(work / "log.jsonl", 0)
    accumulate = config.batch_size // (config.micro_batch * dist.world)
    if dist.main:
        work.mkdir(parents=True, exist_ok=True)
        (work / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    log = (work / "log.jsonl").open("a") if dist.main else None
    bar = tqdm(total=config.steps, initial=step, desc=config.stage, disable=not (progress and dist.main),
               dynamic_ncols=True)
    started = time.time()
    try:
        while step < config.steps:
            tick = time.time()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(config, step)
            batch = shard(packed_batch(tokenizer, config.seed, step, config.seq_len, config.batch_size, config.mixture),
                          dist.rank, dist.world).to(dist.device)
            sums: dict[str, float] = {}
            for i in range(accumulate):
                ids = batch[i * config.micro_batch : (i + 1) * config.micro_batch]
                loss, metrics = stage.loss(model, teacher, ids)
                if not torch.isfinite(loss):  # step + 1: the log counts steps from 1
                    raise _diverged(config, work, f"the {config.stage} loss is {loss.item()} at step {step + 1}")
                (loss / accumulate).backward()
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v / accumulate
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
                grad_norm = grad_norm.full_tensor()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_per_s = config.batch_size * config.seq_len / max(time.time() - tick, 1e-9)
            if dist.main:
                record = {"step": step, **{k: round(v, 6) for k, v in sums.items()}, "lr": lr_at(config, step - 1),
                          "grad_norm": round(float(grad_norm), 4), "tokens_per_s": round(tokens_per_s, 1)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{sums['loss']:.4f}", tok_s=f"{tokens_per_s:,.0f}")
                bar.update(1)
            # every process stops at the same step (each one's clock alone could stop one a step before another,
            # which would then wait forever in the next step's collectives)
            out_of_time = config.max_minutes is not None and dist.any(time.time() - started > config.max_minutes * 60)
            if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
                problem = weights_problem(student.named_parameters())
                if dist.any(problem is not None):  # a diverged model is never a "last good checkpoint"
                    raise _diverged(config, work, f"the {config.stage} weights after step {step} are unusable "
                                                  f"({problem or 'on another process'}); no checkpoint was written")
                save_checkpoint(work, model, optimizer, step, config, write=dist.main,
                                meta={"digests": digests, "changes": changes})
                dist.barrier()
            if out_of_time and step < config.steps:
                if dist.main:
                    bar.write(f"stopping after {config.max_minutes} minutes at step {step}; run again to resume")
                return None
        bar.close()
        model_dir = out / "model"
        if dist.main:
            if dist.strategy(config.parallel) == "fsdp":  # the weights are sharded: save the gathered ones
                student = _unsharded(config, stage, work)
            model_dir = save(student, out / "model", tokenizer)
            _finish(work, out, config, changes)
        dist.barrier()  # every process returns once the model is written: the next stage may start from it
        return model_dir
    finally:
        if log is not None:
            log.close()


def _unsharded(config: TransferConfig, stage, work: Path):
    """The trained student as one plain model on the CPU, from the final checkpoint (saved at the last step)."""
    from safetensors.torch import load_file

    _, _, student = _models(config, stage, "cpu", with_teacher=False)
    student.load_state_dict(load_file(str(work / "checkpoint" / "model.safetensors")))
    return student


def _finish(work: Path, out: Path, config: TransferConfig, changes: list[dict]) -> None:
    from ..plots import plot_loss_log

    rows = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines() if line.strip()]
    # `config` holds the settings of the last part of the run; `changed_on_resume`, where they changed
    summary = {"stage": config.stage, "steps": config.steps, "final_loss": rows[-1]["loss"] if rows else None,
               "tokens": config.steps * config.batch_size * config.seq_len, "config": config.to_dict(),
               "changed_on_resume": changes}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_loss_log(work / "log.jsonl", out / "loss.png", title=f"stage {config.stage}")
