"""Token selection of a retrieval head: the top-k tokens (or blocks) by its attention, the sink and recent
tokens always kept, padding never chosen."""

from __future__ import annotations

import torch


def forced_tokens(valid: torch.Tensor, sink: int, recent: int) -> torch.Tensor:
    """[..., N] bool: the first `sink` and last `recent` real tokens of each row.

    Counted over real tokens rather than positions, so that a left-padded row keeps its own first tokens
    (the attention sink) and a causal row of a training batch keeps the tokens just before its query.
    """
    v = valid.to(torch.int32)
    from_start = v.cumsum(-1)
    from_end = v.flip(-1).cumsum(-1).flip(-1)
    return valid & ((from_start <= sink) | (from_end <= recent))


def select_tokens(scores: torch.Tensor, valid: torch.Tensor | None, k: int, sink: int = 4, recent: int = 32,
                  block_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick `k` of N tokens per row of `scores` [..., N] (higher is more important).

    valid: [..., N] bool (broadcastable), False for padding and future tokens. Returns (index, keep), both
    [..., k'] with k' = k (or whole blocks covering k tokens with `block_size`): the chosen token positions and
    whether each is real; `keep` is False only where a row has fewer real tokens than the budget, or where a
    block runs past the end or into padding.
    """
    n = scores.shape[-1]
    if valid is None:
        valid = torch.ones(n, dtype=torch.bool, device=scores.device)
    forced = forced_tokens(valid, sink, recent)  # before broadcasting: one pass per row, not per head
    valid = valid.expand_as(scores)
    ranked = scores.float().masked_fill(~valid, float("-inf")).masked_fill_(forced, float("inf"))
    if block_size is None:
        k = min(k, n)
        index = ranked.topk(k, dim=-1, sorted=False).indices.sort(-1).values  # sorted: gathers read in order
        return index, valid.gather(-1, index)
    n_blocks = -(-n // block_size)
    padded = torch.nn.functional.pad(ranked, (0, n_blocks * block_size - n), value=float("-inf"))
    block_scores = padded.view(*ranked.shape[:-1], n_blocks, block_size).amax(-1)  # [..., n_blocks]
    # a block holding a sink or recent token scores +inf; never drop one of those for the budget
    must = int((block_scores == float("inf")).sum(-1).max()) if block_scores.numel() else 0
    top = min(max(-(-k // block_size), must), n_blocks)
    blocks = block_scores.topk(top, dim=-1, sorted=False).indices.sort(-1).values  # [..., top]
    offsets = torch.arange(block_size, device=scores.device)
    index = (blocks[..., None] * block_size + offsets).flatten(-2)  # [..., top * block_size]
    inside = index < n
    index = index.clamp(max=n - 1)
    return index, inside & valid.gather(-1, index)


def selection_mask(index: torch.Tensor, keep: torch.Tensor, n: int) -> torch.Tensor:
    """[..., n] bool from a selection (index, keep) [..., k]: for the trainer, which masks instead of gathering."""
    # scatter_add, not scatter: a block clamped at the end repeats index n - 1, once kept and once not
    hits = torch.zeros(*index.shape[:-1], n, dtype=torch.int32, device=index.device)
    return hits.scatter_add(-1, index, keep.to(torch.int32)) > 0
