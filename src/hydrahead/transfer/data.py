"""Packed training sequences from the offline corpus and task mixture.

Examples (RULER-style task samples with their answers, and the copy drills) are concatenated with EOS
between them and cut into rows of exactly `seq_len` tokens: no padding, so every row and every process
weighs the same in a mean loss. A batch is a function of (seed, step) alone, which is what makes a
resumed run see the same data as an uninterrupted one, and lets each process take its own rows.
"""

from __future__ import annotations

import random

import torch

from ..teacher.corpus import MIXTURE, encode_example


def packed_batch(tokenizer, seed: int, step: int, seq_len: int, rows: int, mixture: dict | None = None) -> torch.Tensor:
    """[rows, seq_len] token ids for optimizer step `step`."""
    rng = random.Random(f"transfer-{seed}-{step}")
    mixture = mixture or MIXTURE
    names, weights = list(mixture), list(mixture.values())
    eos = tokenizer.eos_token_id
    need = rows * seq_len
    stream: list[int] = []
    while len(stream) < need:
        # a quarter, a half or a whole row: long rows get long-range examples, and still pack several
        length = max(64, rng.choice([seq_len // 4, seq_len // 2, seq_len]))
        example = encode_example(tokenizer, rng.choices(names, weights)[0], rng, length)
        if example is not None:
            stream += example[0] + [eos]
    return torch.tensor(stream[:need]).view(rows, seq_len)


def shard(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This process's rows of a global batch (contiguous blocks, so ranks see equal counts)."""
    per = batch.shape[0] // world
    return batch[rank * per : (rank + 1) * per]
