"""Multi-query associative recall (Zoology, Arora et al. 2023) on raw token ids, for layer-level tests.

A sequence opens with `num_pairs` key-value pairs; the keys then reappear, in random order, at random
positions in the rest of the sequence, and the label at each reappearance is its value. Keys come from
the lower half of the vocabulary and values from the upper half, so recall cannot be guessed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a batch is made, not with the task registry (the CLI's checks)
    import torch


def mqar_batch(
    num_examples: int, seq_len: int, num_pairs: int, vocab_size: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns input_ids [N, T] and labels [N, T] (-100 where nothing is asked)."""
    import torch

    if vocab_size < 4 * num_pairs:
        raise ValueError(f"vocab_size {vocab_size} is too small for {num_pairs} distinct keys and values")
    if seq_len < 4 * num_pairs:
        raise ValueError(f"seq_len {seq_len} cannot hold {num_pairs} pairs and their queries (need >= {4 * num_pairs})")
    g = torch.Generator().manual_seed(seed)
    half = vocab_size // 2
    keys = torch.stack([torch.randperm(half - 1, generator=g)[:num_pairs] + 1 for _ in range(num_examples)])  # [N, P]
    values = torch.stack([torch.randperm(half, generator=g)[:num_pairs] + half for _ in range(num_examples)])  # [N, P]
    pairs = torch.stack([keys, values], dim=-1).reshape(num_examples, 2 * num_pairs)  # [N, 2P]
    rest = seq_len - 2 * num_pairs
    # queries sit at even offsets of the rest so that a query and its label never collide
    slots = torch.stack([torch.randperm(rest // 2, generator=g)[:num_pairs] * 2 for _ in range(num_examples)])  # [N, P]
    order = torch.stack([torch.randperm(num_pairs, generator=g) for _ in range(num_examples)])  # [N, P]
    inputs = torch.zeros(num_examples, seq_len, dtype=torch.long)
    labels = torch.full((num_examples, seq_len), -100, dtype=torch.long)
    inputs[:, : 2 * num_pairs] = pairs
    rows = torch.arange(num_examples)[:, None]
    pos = 2 * num_pairs + slots
    inputs[rows, pos] = keys.gather(1, order)
    labels[rows, pos] = values.gather(1, order)
    return inputs, labels
