"""Path patching (Wang et al. 2022, the IOI paper): how much of a sender head's effect reaches the
answer *through* a set of receiver heads' inputs (their queries, keys and values alike).

For each sender, in the direction of `Runs` (base run, source run):
1. run the base input with every head frozen to its base output except the sender, which takes its
   source output; MLPs and norms are recomputed, so the sender's change reaches later layers only
   through the residual stream. Record what the receivers compute from that residual;
2. run the base input again with only the receivers' outputs replaced by those recordings, and
   everything downstream recomputed;
3. score = (LD_patched - LD_base) / (LD_source - LD_base).

A sender in the same layer as a receiver, or above it, has no path to it: its score is 0 without a run.
Step 1 stops after the last receiver layer, and many senders share a forward as replicas.
"""

from __future__ import annotations

import torch

from .behaviours import PairBatch, SelectionError
from .heads import (
    HeadSite,
    StopForward,
    last_logits,
    replicas_per_forward,
    replicate,
    start_at,
)
from .patching import OnChunk, Runs, Unit, chunks, measure, unit_masks


def _frozen(mask: torch.Tensor, base: torch.Tensor, source: torch.Tensor):
    """Every head at its base output, except replica k's senders at their source output."""
    frozen = None

    def patch(h: torch.Tensor) -> torch.Tensor:
        nonlocal frozen
        if frozen is None:
            m = mask.to(h.device)[:, None, None, :, None]
            frozen = torch.where(m, source[None], base[None]).reshape(h.shape)  # [K * N, T, H, D]
        return frozen

    return patch


def _receivers_from(recorded: torch.Tensor, heads: list[int]):
    """Replace the receiver heads by what they computed in step 1; other heads stay as computed now."""

    def patch(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[:, :, heads] = recorded
        return h

    return patch


@torch.no_grad()
def path_patching(model, batch: PairBatch, runs: Runs, receivers: list[tuple[int, int]], senders: list[Unit],
                  max_tokens: int = 16384, on_chunk: OnChunk | None = None) -> dict[str, float]:
    if not receivers:
        raise SelectionError("path patching needs at least one receiver head")
    by_layer: dict[int, list[int]] = {}
    for layer, h in receivers:
        by_layer.setdefault(layer, []).append(h)
    top = max(by_layer)
    results = {name: 0.0 for name, heads in senders if min(heads) >= top}  # no path upward from here
    todo = [u for u in senders if u[0] not in results]
    if on_chunk and results:
        on_chunk(dict(results))
    per_forward = replicas_per_forward(batch, max_tokens)
    with HeadSite(model) as site:
        for start, chunk in chunks(todo, per_forward):
            # receivers at or below the senders' layer see the base residual: only those above can change
            active = {layer: hs for layer, hs in by_layer.items() if layer > start}
            ids, mask = replicate(runs.base_ids, batch.mask, len(chunk))
            masks = unit_masks(chunk, site.shape)
            none = torch.zeros(len(chunk), site.shape.num_heads, dtype=torch.bool)
            site.reset()
            site.record, site.stop_after = set(active), top
            site.patches = {
                layer: _frozen(masks.get(layer, none), runs.base_heads[layer], runs.source_heads[layer])
                for layer in range(start, top + 1)
            }
            try:
                with start_at(model, start, runs.start(start, len(chunk))):
                    last_logits(model, ids, mask)
            except StopForward:
                pass
            recorded = {layer: site.recorded[layer][:, :, hs].clone() for layer, hs in active.items()}
            site.reset()
            site.patches = {layer: _receivers_from(recorded[layer], hs) for layer, hs in active.items()}
            measure(model, batch, runs, chunk, min(active), results, on_chunk)
    return results
