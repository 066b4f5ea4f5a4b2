"""The retrieval score of Wu et al. 2024 ("Retrieval Head Mechanistically Explains Long-Context
Factuality"), the attention-based baseline for choosing FA heads.

With the answer teacher-forced after a NIAH prompt, a head performs a copy-paste step when, predicting
answer token w, its highest attention weight falls on a needle token equal to w. Its score is the share
of needle tokens it copies this way, averaged over samples. It needs attention weights, so it runs the
model in eager attention (one sample at a time, one layer's weights alive at a time) and restores the
model's own implementation afterwards.
"""

from __future__ import annotations

import numpy as np
import torch

from ..tasks import generate
from .behaviours import SelectionError
from .heads import attention_modules


def _needle_positions(tokenizer, prompt: str, start: int, end: int) -> list[int]:
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    if "offset_mapping" not in enc:
        raise SelectionError("the retrieval score needs a fast tokenizer (one that returns offset mappings)")
    return [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start and b > a]


@torch.no_grad()
def retrieval_scores(model, tokenizer, length: int, num_samples: int = 8, seed: int = 0,
                     task: str = "niah_single_1", progress=None) -> np.ndarray:
    """[L, H] retrieval scores in [0, 1]."""
    modules = attention_modules(model)
    heads = model.config.num_attention_heads
    device = next(model.parameters()).device
    hits = np.zeros((len(modules), heads))
    needle_tokens = 0
    picks: dict[int, torch.Tensor] = {}
    query_rows: list[int] = []

    def hook_for(layer):
        def hook(module, args, output):
            weights = output[1]  # [1, H, T, T], eager attention only
            picks[layer] = weights[0, :, query_rows].argmax(-1).cpu()  # [H, A]

        return hook

    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        for sample in generate(task, tokenizer, length, num_samples, seed=seed):
            value = sample.outputs[0]
            span_start = sample.input.index(value, sample.extra["needle_span"][0])
            prompt = sample.prompt()
            needle = _needle_positions(tokenizer, prompt, span_start, span_start + len(value))
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer = tokenizer(sample.extra["answer"], add_special_tokens=False)["input_ids"]
            needle_ids = {ids[p] for p in needle}
            copied = [j for j, a in enumerate(answer) if a in needle_ids]  # answer tokens found in the needle
            if not copied:
                continue
            query_rows[:] = [len(ids) + j - 1 for j in copied]  # the position that predicts answer[j]
            seq = torch.tensor([ids + answer], device=device)
            model(input_ids=seq, use_cache=False)
            seq0 = seq[0].cpu()
            needle_set = torch.tensor(needle)
            targets = torch.tensor([answer[j] for j in copied])  # [A]
            for layer, pick in picks.items():
                ok = torch.isin(pick, needle_set) & (seq0[pick] == targets[None])  # [H, A]
                hits[layer] += ok.sum(-1).numpy()
            needle_tokens += len(needle)
            if progress is not None:
                progress()
    finally:
        for h in handles:
            h.remove()
        model.set_attn_implementation(previous)
    if needle_tokens == 0:
        raise SelectionError(f"no {task} sample had an answer token inside its needle; cannot score retrieval")
    return hits / needle_tokens
