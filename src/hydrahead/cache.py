"""The hybrid cache, built from the head plan: keys and values only for the KV heads that FA heads need,
GDN states for the rest.

`HydraCache` is a transformers `Cache` whose layers are hydrahead's own: keys and values go through the
Cache API (`update(keys, values, layer_idx)`), the GDN recurrent and short-conv states through named
methods (`gdn_state`, `update_gdn_state`). The cache counts the tokens it has seen itself, because a layer
without FA heads stores no KV to count. A hydrahead model builds one when a forward or `generate()` asks
for a cache; nothing in it is replaced inside a forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .batch_ops import BatchOps
from .errors import HydraheadError


class CacheError(HydraheadError):
    pass


class KVLayer(BatchOps, CacheLayerMixin):
    """Keys and values [B, H, T, D] of one layer's cached KV heads, appended in place into a buffer that
    doubles when full, so a decode step writes one token instead of copying the whole cache."""

    is_compileable = False
    is_croppable = False  # the hybrid's GDN states cannot be rolled back with it

    def __init__(self, reserve: int | None = None):
        super().__init__()
        self.reserve = reserve  # tokens to allocate at the first update (generate() knows its final length)
        self.length = 0
        self._keys: torch.Tensor | None = None  # [B, H, capacity, D]
        self._values: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self._allocate(key_states, value_states, max(self.reserve or 0, key_states.shape[-2]))
        self.is_initialized = True

    def _allocate(self, key_states: torch.Tensor, value_states: torch.Tensor, capacity: int) -> None:
        B, H, _, D = key_states.shape
        keys = key_states.new_empty(B, H, capacity, D)
        values = value_states.new_empty(B, H, capacity, value_states.shape[-1])
        if self._keys is not None:
            keys[..., : self.length, :] = self._keys[..., : self.length, :]
            values[..., : self.length, :] = self._values[..., : self.length, :]
        self._keys, self._values = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append key/value states [B, H, T, D]; returns views of every token so far."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            self._allocate(key_states, value_states, max(end, 2 * self._keys.shape[-2]))
        self._keys[..., self.length : end, :] = key_states
        self._values[..., self.length : end, :] = value_states
        self.length = end
        self.keys, self.values = self._keys[..., :end, :], self._values[..., :end, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def nbytes(self) -> int:
        """Bytes of the tokens held (the buffer's spare capacity is not counted; `capacity_nbytes` is)."""
        return _nbytes(self.keys, self.values)

    def capacity_nbytes(self) -> int:
        return _nbytes(self._keys, self._values)

    def reset(self) -> None:
        self._keys = self._values = self.keys = self.values = None
        self.length = 0
        self.is_initialized = False

    def map_batch(self, fn) -> None:
        if self._keys is None:
            return
        self._keys, self._values = fn(self._keys), fn(self._values)
        self.keys, self.values = self._keys[..., : self.length, :], self._values[..., : self.length, :]

    def crop(self, tokens_to_remove: int) -> None:
        raise CacheError("a hybrid cache cannot be cropped: its GDN states cannot be rolled back")


class KVCache(Cache):
    """A plain model's cache (every head FA): one `KVLayer` per layer, appended in place, where transformers'
    DynamicCache concatenates the whole past at every step. `reserve` preallocates that many tokens.

    For any Qwen3 / Llama: `model(ids, use_cache=True, **cache_arg(KVCache(model.config)))` (`hydrahead.compat`:
    the argument's name differs between transformers releases). It cannot be cropped (assisted decoding needs a
    DynamicCache)."""

    def __init__(self, config, reserve: int | None = None):
        super().__init__(layers=[KVLayer(reserve) for _ in range(config.num_hidden_layers)])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, kwargs: dict | None = None):
        """Append [B, H, T, D] keys / values of `layer_idx`; returns every token's so far (views, no copy).

        `kwargs`: transformers 5.24's attention layers pass their own keyword arguments along (5.23 passes none);
        a plain KV layer has no use for them."""
        return self.layers[layer_idx].update(key_states, value_states)

    def crop(self, max_length: int) -> None:
        raise CacheError("a KVCache cannot be cropped; use transformers' DynamicCache for assisted decoding")


@dataclass
class GDNState:
    conv: torch.Tensor | None = None  # [B, C, conv_size - 1], the short conv's input history
    recurrent: torch.Tensor | None = None  # [B, H_gdn, K, V], float32

    def nbytes(self) -> int:
        return _nbytes(self.conv, self.recurrent)

    def map_batch(self, fn) -> None:
        self.conv = None if self.conv is None else fn(self.conv)
        self.recurrent = None if self.recurrent is None else fn(self.recurrent)


class HydraCache(BatchOps, Cache):
    """One KV layer and one GDN state per decoder layer of a hydrahead model (`config.hydrahead` holds the
    plan). `kv_layers` replaces the plain KV layers (a quantized KV cache passes its own); without them, a
    plan with `kv_formats` gets quantized layers in those formats (`hydrahead.kv.cache.plan_layers`), any
    other plain ones. `reserve` preallocates that many tokens per plain layer."""

    def __init__(self, config, kv_layers: list | None = None, reserve: int | None = None):
        from .configuration import hybrid_spec

        plan, _ = hybrid_spec(config)
        n = plan.shape.num_layers
        if kv_layers is None and plan.kv_formats is not None:
            from .kv.cache import plan_layers

            kv_layers = plan_layers(plan)
        layers = list(kv_layers) if kv_layers is not None else [KVLayer(reserve) for _ in range(n)]
        if len(layers) != n:
            raise CacheError(f"{len(layers)} KV layers for a model of {n} layers")
        super().__init__(layers=layers)
        self.plan = plan
        self.gdn = [GDNState() for _ in range(n)]
        self.seen_tokens = 0

    # -- the Cache API for FA keys and values
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int):
        """Store the FA keys / values [B, H_cached, T, D] of `layer_idx`; returns every token's so far."""
        return self.layers[layer_idx].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def advance(self, num_tokens: int) -> None:
        """Called by the model once every layer has taken a forward's `num_tokens` tokens."""
        self.seen_tokens += num_tokens

    # -- named methods for the GDN states
    def gdn_state(self, layer_idx: int) -> GDNState:
        return self.gdn[layer_idx]

    def update_gdn_state(self, layer_idx: int, conv: torch.Tensor, recurrent: torch.Tensor) -> None:
        state = self.gdn[layer_idx]
        state.conv, state.recurrent = conv, recurrent

    def map_batch(self, fn) -> None:
        """Batch operations (beam search, contrastive search) reach the KV layers and the GDN states alike."""
        for layer, state in zip(self.layers, self.gdn):
            layer.map_batch(fn)
            state.map_batch(fn)

    def crop(self, max_length: int) -> None:
        raise CacheError("a hybrid cache cannot be cropped: its GDN states cannot be rolled back")

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
        self.gdn = [GDNState() for _ in self.layers]
        self.seen_tokens = 0

    def nbytes(self) -> int:
        return cache_nbytes(self)


def cache_nbytes(cache: Cache) -> int:
    """The bytes a cache holds: keys and values (a layer that counts its own bytes, a quantized one, is
    asked), plus the GDN states of a `HydraCache`."""
    kv = sum(layer.nbytes() if callable(getattr(layer, "nbytes", None)) else _nbytes(layer.keys, layer.values)
             for layer in cache.layers)
    return kv + sum(state.nbytes() for state in getattr(cache, "gdn", []))


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
