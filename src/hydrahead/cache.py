"""The hybrid cache: keys and values only for the KV heads that FA heads need, GDN states for the rest.

Each layer is a `HybridLayer`: a transformers `DynamicLayer` (so masks, `generate` and the Cache API work
unchanged) whose KV tensors hold only the cached KV heads, plus the GDN recurrent state (float32
[B, H_gdn, K, V]) and the short-conv history ([B, C, conv_size - 1]). It counts the tokens it has seen
itself, because a layer without FA heads stores no KV to count.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .errors import HydraheadError


class HybridLayer(DynamicLayer):
    is_croppable = False  # a GDN state cannot be rolled back

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv_state: torch.Tensor | None = None  # [B, C, conv_size - 1]
        self.recurrent_state: torch.Tensor | None = None  # [B, H_gdn, K, V], float32
        self.tokens = 0

    def get_seq_length(self) -> int:
        return self.tokens

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.tokens + query_length, 0

    def nbytes(self) -> int:
        return _nbytes(self.keys, self.values, self.conv_state, self.recurrent_state)

    def reset(self) -> None:
        super().reset()
        self.conv_state = self.recurrent_state = None
        self.tokens = 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.keys is not None and self.keys.numel():
            super().reorder_cache(beam_idx)
        self._select_states(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.keys is not None and self.keys.numel():
            super().batch_select_indices(indices)
        self._select_states(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.keys is not None and self.keys.numel():
            super().batch_repeat_interleave(repeats)
        if self.conv_state is not None:
            self.conv_state = self.conv_state.repeat_interleave(repeats, dim=0)
        if self.recurrent_state is not None:
            self.recurrent_state = self.recurrent_state.repeat_interleave(repeats, dim=0)

    def crop(self, tokens_to_remove: int) -> None:
        if self.recurrent_state is not None:
            raise HydraheadError("a GDN state cannot be rolled back: cropping a hybrid cache is not supported")
        super().crop(tokens_to_remove)
        self.tokens = max(0, self.tokens - abs(tokens_to_remove))

    def _select_states(self, index: torch.Tensor) -> None:
        if self.conv_state is not None:
            self.conv_state = self.conv_state.index_select(0, index.to(self.conv_state.device))
        if self.recurrent_state is not None:
            self.recurrent_state = self.recurrent_state.index_select(0, index.to(self.recurrent_state.device))


class HybridCache(Cache):
    """A cache with one `HybridLayer` per model layer. `generate()` does not need it passed in: a hybrid
    attention layer upgrades an empty `DynamicLayer` of any `DynamicCache` to a `HybridLayer` on first use."""

    def __init__(self, num_layers: int):
        super().__init__(layers=[HybridLayer() for _ in range(num_layers)])

    def nbytes(self) -> int:
        return cache_nbytes(self)


def hybrid_layer(cache: Cache, layer_idx: int) -> HybridLayer:
    """The `HybridLayer` for `layer_idx`, put in place of a fresh `DynamicLayer` if needed."""
    if cache.layer_class_to_replicate is not None:
        while len(cache.layers) <= layer_idx:
            cache.layers.append(cache.layer_class_to_replicate())
    layer = cache.layers[layer_idx]
    if isinstance(layer, HybridLayer):
        return layer
    if type(layer) is DynamicLayer and not layer.is_initialized:
        cache.layers[layer_idx] = HybridLayer()
        return cache.layers[layer_idx]
    raise HydraheadError(
        f"layer {layer_idx} of the cache is a {type(layer).__name__} that already holds data: "
        "a hybrid model needs a fresh cache (a new DynamicCache or hydrahead.HybridCache)"
    )


def cache_nbytes(cache: Cache) -> int:
    """The bytes a cache holds: keys and values, plus GDN states for hybrid layers; a layer that counts its own
    bytes (a quantized KV layer) is asked."""
    return sum(layer.nbytes() if callable(getattr(layer, "nbytes", None)) else _nbytes(layer.keys, layer.values)
               for layer in cache.layers)


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
