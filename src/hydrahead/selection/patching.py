"""Activation patching and attribution patching of attention heads.

A run is patched *into* a base run *from* a source run. `denoise` patches clean activations into the
corrupted run (does this head suffice to bring the answer back?); `noise` patches corrupted activations
into the clean run (does losing this head break it?). Either way the effect of a unit of heads is

    (LD_patched - LD_base) / (LD_source - LD_base)

over the mean logit difference of the batch: 0 when the heads carry nothing, 1 when they carry all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..plan import ModelShape
from .behaviours import PairBatch, SelectionError
from .heads import (
    HeadSite,
    cache_heads,
    last_logits,
    logit_diff,
    replicas_per_forward,
    replicate,
    residuals,
    start_at,
)

DIRECTIONS = ("denoise", "noise")
Unit = tuple[str, dict[int, list[int]]]  # a name and the heads it covers: {layer: [query heads]}
OnChunk = Callable[[dict[str, float]], None]


def head_units(shape: ModelShape) -> list[Unit]:
    return [(f"L{layer}.H{h}", {layer: [h]}) for layer in range(shape.num_layers) for h in range(shape.num_heads)]


def group_units(shape: ModelShape) -> list[Unit]:
    g = shape.group_size
    return [
        (f"L{layer}.KV{kv}", {layer: list(range(kv * g, (kv + 1) * g))})
        for layer in range(shape.num_layers)
        for kv in range(shape.num_kv_heads)
    ]


@dataclass
class Runs:
    """The base and source runs of one batch: their head outputs and logit differences."""

    base_ids: torch.Tensor  # [N, T]
    base_heads: list[torch.Tensor]  # per layer [N, T, H, D]
    base_ld: torch.Tensor  # [N]
    source_heads: list[torch.Tensor]
    source_ld: torch.Tensor
    base_residuals: list[torch.Tensor]  # per layer, the residual stream entering it [N, T, d]

    def start(self, layer: int, replicas: int) -> torch.Tensor | None:
        """The base residual entering `layer`, once per replica (None at layer 0: nothing to skip)."""
        return self.base_residuals[layer].repeat(replicas, 1, 1) if layer else None

    @property
    def gap(self) -> float:
        return float(self.source_ld.mean() - self.base_ld.mean())

    def effect(self, patched_ld: torch.Tensor) -> torch.Tensor:
        """[K, N] patched logit differences -> [K] normalised effects."""
        return (patched_ld.mean(-1) - self.base_ld.mean()) / self.gap


def prepare_runs(model, batch: PairBatch, direction: str = "denoise") -> Runs:
    if direction not in DIRECTIONS:
        raise SelectionError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    with HeadSite(model) as site:
        clean_heads, clean_ld = cache_heads(model, site, batch.clean, batch.mask, batch)
        corrupt_heads, corrupt_ld = cache_heads(model, site, batch.corrupt, batch.mask, batch)
    if direction == "denoise":
        return Runs(batch.corrupt, corrupt_heads, corrupt_ld, clean_heads, clean_ld,
                    residuals(model, batch.corrupt, batch.mask))
    return Runs(batch.clean, clean_heads, clean_ld, corrupt_heads, corrupt_ld, residuals(model, batch.clean, batch.mask))


def unit_masks(units: list[Unit], shape: ModelShape) -> dict[int, torch.Tensor]:
    """Per layer that any unit touches, a [K, H] bool mask of the heads each unit patches."""
    masks: dict[int, torch.Tensor] = {}
    for k, (_, heads) in enumerate(units):
        for layer, hs in heads.items():
            masks.setdefault(layer, torch.zeros(len(units), shape.num_heads, dtype=torch.bool))[k, hs] = True
    return masks


def swap_heads(mask: torch.Tensor, source: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A patch that, in replica k, replaces the heads of mask[k] by the source run's outputs."""
    k = mask.shape[0]

    def patch(h: torch.Tensor) -> torch.Tensor:
        b, t, heads, d = h.shape
        h = h.view(k, b // k, t, heads, d)  # [K, N, T, H, D]
        m = mask.to(h.device)[:, None, None, :, None]
        return torch.where(m, source[None], h).view(b, t, heads, d)

    return patch


def chunks(units: list[Unit], size: int):
    """Chunks of at most `size` units that share their lowest layer, with that layer: a chunk's forward
    starts there, since nothing below it is patched."""
    by_start: dict[int, list[Unit]] = {}
    for unit in units:
        by_start.setdefault(min(unit[1]), []).append(unit)
    for start, group in sorted(by_start.items()):
        for i in range(0, len(group), size):
            yield start, group[i : i + size]


@torch.no_grad()
def activation_patching(model, batch: PairBatch, runs: Runs, units: list[Unit], max_tokens: int = 16384,
                        on_chunk: OnChunk | None = None) -> dict[str, float]:
    """The normalised effect of patching each unit alone. Many units share one forward, one per replica."""
    results: dict[str, float] = {}
    per_forward = replicas_per_forward(batch, max_tokens)
    with HeadSite(model) as site:
        for start, chunk in chunks(units, per_forward):
            site.reset()
            site.patches = {
                layer: swap_heads(mask, runs.source_heads[layer]) for layer, mask in unit_masks(chunk, site.shape).items()
            }
            measure(model, batch, runs, chunk, start, results, on_chunk)
    return results


def measure(model, batch: PairBatch, runs: Runs, chunk: list[Unit], start: int, results: dict[str, float],
            on_chunk: OnChunk | None) -> None:
    """Run the chunk's replicas (patches already set) from layer `start`; record and report each unit's effect."""
    ids, mask = replicate(runs.base_ids, batch.mask, len(chunk))
    with start_at(model, start, runs.start(start, len(chunk))):
        effects = runs.effect(logit_diff(last_logits(model, ids, mask), batch))
    done = {name: float(e) for (name, _), e in zip(chunk, effects)}
    results.update(done)
    if on_chunk:
        on_chunk(done)


def attribution_patching(model, batch: PairBatch, runs: Runs, units: list[Unit]) -> dict[str, float]:
    """The first-order estimate of every unit's effect from one forward and one backward pass:
    gradient of the metric times (source - base) activation, summed over the unit's heads."""
    with HeadSite(model) as site, torch.enable_grad():
        layers = list(range(site.shape.num_layers))
        site.record = set(layers)
        ld = logit_diff(last_logits(model, runs.base_ids, batch.mask), batch).mean()
        grads = torch.autograd.grad(ld, [site.recorded[layer] for layer in layers])
    per_head = [
        (g.detach() * (runs.source_heads[layer] - runs.base_heads[layer])).sum(dim=(0, 1, 3))  # [H]
        for layer, g in zip(layers, grads)
    ]
    return {name: float(sum(per_head[layer][hs].sum() for layer, hs in heads.items())) / runs.gap for name, heads in units}
