"""Training data for decode roles: offline passkey / NIAH prompts, prefilled densely and answered greedily by
the dense model itself. The student re-decodes those answers over the cached prompts, so a training step
costs a few rows, not the whole prompt."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..compat import cache_arg, output_cache
from .config import DecodingError


@dataclass
class Example:
    """A prompt's dense KV cache and the dense model's greedy answer to it."""

    keys: list[torch.Tensor]  # per layer [Hk, P, D]
    values: list[torch.Tensor]
    answer: list[int]


def build_examples(model, tokenizer, cfg) -> list[Example]:
    """Offline task samples, each prefilled densely and answered greedily by the dense model itself."""
    from ..tasks import generate

    length = cfg.length or int(getattr(model.config, "max_position_embeddings", 512))
    per_task = [cfg.samples // len(cfg.tasks) + (i < cfg.samples % len(cfg.tasks)) for i in range(len(cfg.tasks))]
    prompts = [tokenizer(s.prompt(), add_special_tokens=False)["input_ids"]
               for task, n in zip(cfg.tasks, per_task) if n for s in generate(task, tokenizer, length, n, seed=cfg.seed)]
    stops = {tokenizer.eos_token_id} | {i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])}
    examples = []
    with torch.no_grad():
        for i in range(0, len(prompts), 8):
            chunk = prompts[i : i + 8]
            ids, mask = left_pad(chunk, 0)
            out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
            cache, width = output_cache(out), ids.shape[1]
            prompt_kv = [(layer.keys[:, :, :width], layer.values[:, :, :width]) for layer in cache.layers]
            answers = _greedy(model, out, mask, cfg.max_answer_tokens)  # [B, new]
            for b, (prompt, row) in enumerate(zip(chunk, answers.tolist())):
                answer = next((row[:j] for j, tok in enumerate(row) if tok in stops), row)
                if len(answer) < 2:  # the first answer token comes from the dense prefill: nothing to learn
                    continue
                real = slice(width - len(prompt), width)
                examples.append(Example([k[b, :, real] for k, _ in prompt_kv], [v[b, :, real] for _, v in prompt_kv], answer))
    if not examples:
        raise DecodingError("the dense model answered none of the training samples with two or more tokens")
    return examples


def _greedy(model, out, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """[B, steps] greedy tokens continuing a prefill `out` (its cache grows in place)."""
    cache, pos = output_cache(out), mask.sum(-1, keepdim=True) - 1  # [B, 1]
    token = out.logits[:, -1:].argmax(-1)
    tokens = [token]
    for _ in range(steps - 1):
        mask, pos = torch.cat([mask, torch.ones_like(mask[:, :1])], 1), pos + 1
        token = model(input_ids=token, attention_mask=mask, position_ids=pos, **cache_arg(cache)).logits.argmax(-1)
        tokens.append(token)
    return torch.cat(tokens, 1)


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask
