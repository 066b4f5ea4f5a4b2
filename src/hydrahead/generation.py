"""Batched greedy generation for prompts of similar length (left padding, as HF decoders expect)."""

from __future__ import annotations

import inspect
import time

import torch

from .compat import cache_arg, output_cache


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: list[str], max_new_tokens: int, stop_at_newline: bool = False,
                    cache_factory=None):
    """Returns (completions, prefill_tokens, prefill_seconds). Sequences stop at EOS. `cache_factory(model)`,
    if given, makes the cache the prompt is prefilled into (a quantized KV cache, say); by default the
    model makes its own."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(e) for e in encoded)
    device = next(model.parameters()).device
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, width - len(e) :] = torch.tensor(e)
        mask[i, width - len(e) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    # time the prefill on its own: it is the long-context cost that later methods cut
    start = time.perf_counter()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = cache_factory(model) if cache_factory is not None else None
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, **cache_arg(cache),
                **_last_logits_only(model))
    prefill_s = time.perf_counter() - start
    cache = output_cache(out)
    next_tok = out.logits[:, -1].argmax(-1)  # [B]
    generated = [next_tok]
    done = next_tok == tokenizer.eos_token_id
    pos = position_ids[:, -1]
    for _ in range(max_new_tokens - 1):
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos + 1
        out = model(
            input_ids=next_tok[:, None], attention_mask=mask, position_ids=pos[:, None], use_cache=True, **cache_arg(cache)
        )
        cache = output_cache(out)
        next_tok = out.logits[:, -1].argmax(-1)
        next_tok = torch.where(done, torch.full_like(next_tok, pad), next_tok)
        generated.append(next_tok)
        done = done | (next_tok == tokenizer.eos_token_id)
    tokens = torch.stack(generated, dim=1).tolist()  # [B, new]
    texts = []
    for row in tokens:
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        text = tokenizer.decode(row, skip_special_tokens=True)
        texts.append(text.split("\n")[0] if stop_at_newline else text)
    return texts, int(mask[:, :width].sum()), prefill_s


def _last_logits_only(model) -> dict:
    """The prefill needs the last position's logits only: ask for those where the model's forward takes
    `logits_to_keep` (transformers' decoders, hydrahead's), which spares a [B, T, vocab] matmul and tensor."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
