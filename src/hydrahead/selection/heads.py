"""Where heads are read and written: the input of every layer's `o_proj`, viewed as [B, T, H, D].

`HeadSite` is a context manager that hooks every o_proj. While it is open, a forward pass can record
the per-head outputs of chosen layers and replace them by a function of what was computed (a patch).
It removes its hooks on exit. Batches are often *replicas*: K copies of the same N pairs stacked along
the batch (replica-major), each replica carrying a different intervention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from ..plan import ModelShape
from .behaviours import PairBatch, SelectionError

Patch = Callable[[torch.Tensor], torch.Tensor]  # [B, T, H, D] -> [B, T, H, D]


class StopForward(Exception):
    """Raised from a hook once everything a pass needs is recorded: later layers are not run."""


def attention_modules(model) -> list[torch.nn.Module]:
    """The attention module of every decoder layer of an HF Qwen3 / Llama-style model."""
    if getattr(model.config, "hydrahead", None):
        raise SelectionError("head selection runs on the original Transformer, not on a converted hybrid")
    layers = getattr(getattr(model, "model", None), "layers", None)
    needed = ("q_proj", "k_proj", "v_proj", "o_proj")
    if layers is None or not all(all(hasattr(getattr(layer, "self_attn", None), n) for n in needed) for layer in layers):
        raise SelectionError(
            f"{type(model).__name__} is not supported: head selection needs decoder layers whose self_attn has "
            "q_proj, k_proj, v_proj and o_proj (Qwen3, Llama and their kin)"
        )
    return [layer.self_attn for layer in layers]


class HeadSite:
    def __init__(self, model):
        self.modules = attention_modules(model)
        self.shape = ModelShape.of(model.config)
        self.record: set[int] = set()
        self.recorded: dict[int, torch.Tensor] = {}  # layer -> [B, T, H, D] as computed, before any patch
        self.patches: dict[int, Patch] = {}
        self.stop_after: int | None = None
        self._handles = []

    def __enter__(self):
        for layer, attn in enumerate(self.modules):
            self._handles.append(attn.o_proj.register_forward_pre_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def reset(self) -> None:
        self.record, self.recorded, self.patches, self.stop_after = set(), {}, {}, None

    def _hook(self, layer: int):
        heads, dim = self.shape.num_heads, self.shape.head_dim

        def hook(module, args):
            x = args[0]
            b, t, _ = x.shape
            out = x.reshape(b, t, heads, dim)  # [B, T, H, D]
            if layer in self.record:
                self.recorded[layer] = out
            if layer in self.patches:
                out = self.patches[layer](out)
            if self.stop_after == layer:
                raise StopForward
            return (out.reshape(b, t, heads * dim), *args[1:])

        return hook


class _Passthrough(torch.nn.Module):
    """Stands in for a decoder layer whose output is already known: costs nothing."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextlib.contextmanager
def start_at(model, layer: int, hidden: torch.Tensor | None):
    """Run the next forwards from decoder layer `layer`, fed `hidden` ([B, T, d], the residual stream
    that enters it) instead of what the layers below would compute. Patched runs that change nothing
    below `layer` are identical there to the base run, so recomputing those layers is wasted work."""
    if layer == 0 or hidden is None:
        yield
        return
    layers = model.model.layers
    saved = [layers[i] for i in range(layer)]

    def feed(module, args, kwargs):
        if args:
            return (hidden.to(args[0].dtype), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden.to(kwargs["hidden_states"].dtype)}

    handle = layers[layer].register_forward_pre_hook(feed, with_kwargs=True)
    try:
        for i in range(layer):
            layers[i] = _Passthrough()
        yield
    finally:
        handle.remove()
        for i, module in enumerate(saved):
            layers[i] = module


def residuals(model, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream entering every decoder layer, [N, T, d] each, for one input."""
    seen: list[torch.Tensor] = []

    def grab(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    handles = [layer.register_forward_pre_hook(grab, with_kwargs=True) for layer in model.model.layers]
    try:
        with torch.no_grad():
            last_logits(model, ids, mask)
    finally:
        for h in handles:
            h.remove()
    return seen


def replicate(batch_ids: torch.Tensor, mask: torch.Tensor, replicas: int) -> tuple[torch.Tensor, torch.Tensor]:
    return batch_ids.repeat(replicas, 1), mask.repeat(replicas, 1)


def last_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits at the last position, [B, V]; position ids follow the left padding, as in generation."""
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False, logits_to_keep=1)
    return out.logits[:, -1].float()


def logit_diff(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """[K * N, V] -> [K, N]: logit[target] - logit[foil] per replica and pair."""
    n = len(batch)
    logits = logits.view(-1, n, logits.shape[-1])
    target, foil = batch.target.to(logits.device), batch.foil.to(logits.device)
    idx = torch.arange(n, device=logits.device)
    return logits[:, idx, target] - logits[:, idx, foil]


def cache_heads(model, site: HeadSite, ids: torch.Tensor, mask: torch.Tensor, batch: PairBatch):
    """One forward: per-layer head outputs [N, T, H, D] and the logit difference per pair [N]."""
    site.reset()
    site.record = set(range(site.shape.num_layers))
    with torch.no_grad():
        logits = last_logits(model, ids, mask)
    recorded = [site.recorded[i].detach().clone() for i in range(site.shape.num_layers)]
    site.reset()
    return recorded, logit_diff(logits, batch)[0]


def replicas_per_forward(batch: PairBatch, max_tokens: int) -> int:
    """How many replicas of the batch fit in one forward of at most `max_tokens` tokens."""
    return max(1, max_tokens // batch.clean.numel())
