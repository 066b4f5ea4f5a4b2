"""Train the small teacher from scratch on the offline corpus, with checkpoints and exact resume.

Retrieval appears after a phase change that needs many optimizer steps, so steps are kept cheap:
4k tokens a step, short sequences first (the needle is a large share of a short haystack, which makes
the copy circuit easy to find), growing to the native length by the middle of the run.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import HydraheadError
from ..resume import check_resume, nested_tensors, trim_log, weights_problem
from .config import PRESETS, TeacherConfig  # noqa: F401  (kept importable from here)


EVAL_TASKS = ("niah_single_1", "niah_multikey_1", "niah_multivalue", "vt")
# settings a resumed run may change when asked by name (the optimizer and the schedule); the other fields
# of TeacherConfig, but for these three, shape the model or its data and must match the checkpoint
CHANGEABLE = ("steps", "lr", "min_lr_ratio", "warmup", "weight_decay", "answer_weight")
FREE = ("checkpoint_every", "eval_every", "eval_samples")  # when to checkpoint and evaluate: change freely


class TeacherError(HydraheadError, RuntimeError):
    """A teacher checkpoint that cannot be trusted, or one made with other settings."""


class TrainingDiverged(TeacherError):
    pass


def build_model(cfg: TeacherConfig, tokenizer):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.native_length,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(cfg.seed)
    return Qwen3ForCausalLM(config)


def lr_at(cfg: TeacherConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def length_at(cfg: TeacherConfig, step: int) -> int:
    """The sequence length of batch `step`: uniform between min_length and a growing maximum."""
    grow = min(1.0, step / max(1, cfg.curriculum_until * cfg.steps))
    top = cfg.start_max_length + grow * (cfg.native_length - cfg.start_max_length)
    return random.Random(f"length-{cfg.seed}-{step}").randint(cfg.min_length, int(top))


def loss_fn(logits, labels, answer_mask, answer_weight: float):
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    weights = answer_mask[:, 1:]
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    per_token = per_token.view_as(targets)
    valid = (targets != -100).float()
    lm = (per_token * valid).sum() / valid.sum()
    answer = (per_token * weights).sum() / weights.sum().clamp(min=1)
    correct = ((logits.argmax(-1) == targets).float() * weights).sum() / weights.sum().clamp(min=1)
    return lm + answer_weight * answer, lm.detach(), answer.detach(), correct


def _last_good(root: Path) -> str:
    try:
        step = json.loads((root / "checkpoint" / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return "(none yet): run again with a lower --lr"
    return f"{root / 'checkpoint'} (step {step}): run again with a lower --lr and --change_on_resume lr to go on from it"


def _save_checkpoint(root: Path, model, optimizer, step: int, cfg: TeacherConfig, counters: dict) -> None:
    from safetensors.torch import save_file

    problem = weights_problem(model.state_dict().items())
    if problem:  # a diverged model is never a "last good checkpoint"
        raise TrainingDiverged(f"the teacher's weights after step {step} are unusable ({problem}); no checkpoint was "
                               f"written; the last good checkpoint is {_last_good(root)}")
    tmp = root / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # the output head is tied to the embedding: store it once
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": asdict(cfg), **counters}))
    final = root / "checkpoint"
    old = root / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)  # the checkpoint directory is replaced in one step: a kill never leaves half of one
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(root: Path, model, optimizer, cfg: TeacherConfig | None = None,
                     allowed=()) -> tuple[int, dict]:
    """Restore model and optimizer; returns the step and the counters (tokens seen, seconds, the settings
    changed on resume). With `cfg`, a checkpoint made with other settings is refused (but for `allowed`)."""
    from safetensors.torch import load_file

    ckpt = root / "checkpoint"
    try:
        state = json.loads((ckpt / "state.json").read_text())
        step = int(state["step"])
        weights = load_file(str(ckpt / "model.safetensors"))
        optim = torch.load(ckpt / "optimizer.pt", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the checkpoint cannot be trusted
        raise TeacherError(f"checkpoint {ckpt} is corrupt or incomplete ({e}); delete it to start over") from None
    changes = {}
    if cfg is not None:
        fixed = [k for k in asdict(cfg) if k not in FREE and k not in CHANGEABLE]
        changes = check_resume(ckpt, step, state.get("config", {}), asdict(cfg), fixed, CHANGEABLE, allowed,
                               TeacherError)
    problem = weights_problem(weights.items()) or weights_problem(nested_tensors(optim), limit=None)
    if problem:  # written before checkpoints were checked, or damaged since
        raise TeacherError(f"checkpoint {ckpt} is unusable: {problem}; delete it to start over")
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise ValueError(f"missing {missing}, unexpected {unexpected}")
        optimizer.load_state_dict(optim)
    except Exception as e:  # noqa: BLE001 - any failure here means the checkpoint cannot be trusted
        raise TeacherError(f"checkpoint {ckpt} is corrupt or incomplete ({e}); delete it to start over") from None
    counters = {k: state.get(k, 0) for k in ("tokens_seen", "train_seconds")}
    counters["changes"] = list(state.get("changes", [])) + ([{"step": step, "changed": changes}] if changes else [])
    return step, counters


def quick_eval(model, tokenizer, cfg: TeacherConfig, tasks=EVAL_TASKS, words: str = "all", length: int | None = None):
    from ..generation import greedy_generate
    from ..tasks import TaskError, generate, get_task
    from ..tasks.scoring import METRICS, postprocess_pred

    model.eval()
    scores = {}
    for name in tasks:
        task = get_task(name)
        try:
            samples = generate(task, tokenizer, length or cfg.native_length, cfg.eval_samples, seed=12345, words=words)
        except TaskError:
            continue  # a tiny test configuration whose context is too short for this task
        preds, _, _ = greedy_generate(model, tokenizer, [s.prompt() for s in samples], task.tokens_to_generate)
        metric = METRICS[task.metric][0]
        scores[name] = metric([postprocess_pred(p) for p in preds], [s.outputs for s in samples])
    model.train()
    return scores


def train(out_dir: str | os.PathLike, cfg: TeacherConfig, max_minutes: float | None = None, progress: bool = True,
          change_on_resume=()):
    """Train (or resume) the teacher in `out_dir`; the final HF directory is written there. A checkpoint made
    with other settings is refused, except for those named in `change_on_resume` (recorded in the summary)."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from .corpus import EARLY_MIXTURE, MIXTURE, make_batch, tokenizer_texts
    from .tokenizer import train_tokenizer

    out = Path(out_dir)
    work = out / "training"
    work.mkdir(parents=True, exist_ok=True)
    # all cores, unless the caller asked for fewer (OMP_NUM_THREADS=1 beside other jobs: contended
    # OpenMP threads make small ops 10-100x slower)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, os.cpu_count() or 1))
    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        train_tokenizer(tokenizer_texts(3000, cfg.seed), cfg.vocab_size).save_pretrained(tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    model = build_model(cfg, tokenizer)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    counters = {"tokens_seen": 0, "train_seconds": 0.0, "changes": []}
    step = 0
    if (work / "checkpoint").exists():
        step, counters = _load_checkpoint(work, model, optimizer, cfg, change_on_resume)
    trim_log(work / "log.jsonl", step)  # the steps after the checkpoint (all, without one) run again
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    log = (work / "log.jsonl").open("a")
    started = time.time()
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="teacher", dynamic_ncols=True)
    model.train()
    window_tokens, window = 0, time.time()
    last = time.time()

    def checkpoint():
        counters["train_seconds"] += time.time() - last
        _save_checkpoint(work, model, optimizer, step, cfg, counters)
        return time.time()

    while step < cfg.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        mixture = EARLY_MIXTURE if step < cfg.drill_steps else MIXTURE
        ids, labels, mask = make_batch(tokenizer, cfg.seed, step, length_at(cfg, step), cfg.tokens_per_batch, mixture)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model(input_ids=ids).logits
        loss, lm, answer, acc = loss_fn(logits, labels, mask, cfg.answer_weight)
        if not torch.isfinite(loss):  # step + 1: the log counts steps from 1
            raise TrainingDiverged(f"loss is {loss.item()} at step {step + 1}; the last good checkpoint is "
                                   f"{_last_good(work)}")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        n_tokens = int((labels != -100).sum())
        window_tokens += n_tokens
        counters["tokens_seen"] += n_tokens
        bar.update(1)
        bar.set_postfix(loss=f"{lm.item():.3f}", ans=f"{answer.item():.3f}", acc=f"{acc.item():.2f}", T=ids.shape[1])
        record = {"step": step, "loss": lm.item(), "answer_loss": answer.item(), "answer_acc": acc.item(),
                  "grad_norm": float(grad_norm), "lr": lr_at(cfg, step - 1), "seq_len": ids.shape[1],
                  "tokens_seen": counters["tokens_seen"], "time": round(time.time(), 1)}
        if step % 25 == 0:
            record["tokens_per_s"] = window_tokens / (time.time() - window)
            window_tokens, window = 0, time.time()
        if cfg.eval_samples > 0 and (step % cfg.eval_every == 0 or step == cfg.steps):
            record["eval"] = quick_eval(model, tokenizer, cfg)
            bar.write(f"step {step}: {record['eval']}")
        log.write(json.dumps(record) + "\n")
        log.flush()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            last = checkpoint()
        if max_minutes is not None and time.time() - started > max_minutes * 60:
            checkpoint()
            bar.write(f"stopping after {max_minutes} minutes at step {step}; run again to resume")
            return None
    bar.close()
    summary = {"steps": step, "tokens_seen": counters["tokens_seen"], "train_minutes": round(counters["train_seconds"] / 60, 1),
               "heldout_loss": round(heldout_loss(model, tokenizer, cfg), 4), "config": asdict(cfg),
               "changed_on_resume": counters["changes"]}
    export(out, model, tokenizer, cfg)
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2))
    (out / "README.md").write_text(model_card(model, summary, out))
    shutil.copy(work / "log.jsonl", out / "training_log.jsonl")
    from ..plots import plot_training_log

    plot_training_log(out / "training_log.jsonl", out / "training_curve.png")
    return out


def _rope_theta(config) -> float:
    # transformers 5 keeps it in rope_parameters; 4.x as an attribute
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 0.0) or 0.0))


def model_card(model, summary: dict, path: Path) -> str:
    c = model.config
    return f"""# hydrahead teacher

A small Qwen3-architecture causal LM trained from scratch by `hydrahead teacher train` on hydrahead's
offline corpus (RULER-style tasks with answers, copy drills, text-like filler). It exists so that the
methods of hydrahead can be measured on a model that trains on a CPU; it knows nothing else.

- architecture: Qwen3, {c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} query heads /
  {c.num_key_value_heads} KV heads (GQA), head_dim {c.head_dim}, RoPE theta {_rope_theta(c):g}
- parameters: {model.num_parameters() / 1e6:.2f}M (embeddings tied); vocabulary {c.vocab_size} (byte-level BPE, one token per digit)
- native context: {c.max_position_embeddings} tokens
- training: {summary["steps"]} steps, {summary["tokens_seen"] / 1e6:.1f}M tokens, {summary["train_minutes"]} minutes
- held-out loss (native length, unseen batches): {summary["heldout_loss"]}

Load it with plain transformers:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")
```
"""


@torch.no_grad()
def heldout_loss(model, tokenizer, cfg: TeacherConfig, batches: int = 8) -> float:
    """Next-token loss at the native length on batches from a seed the run never trained on."""
    from .corpus import make_batch

    model.eval()
    total = 0.0
    for i in range(batches):
        ids, labels, mask = make_batch(tokenizer, cfg.seed + 1_000_003, i, cfg.native_length, cfg.tokens_per_batch)
        total += loss_fn(model(input_ids=ids).logits, labels, mask, 0.0)[1].item()
    model.train()
    return total / batches


def export(out: Path, model, tokenizer, cfg: TeacherConfig) -> None:
    """Write the standard HF directory (config, safetensors, tokenizer, generation config)."""
    from transformers import GenerationConfig

    model.config.architectures = ["Qwen3ForCausalLM"]
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=64
    ).save_pretrained(out)
