"""A layer whose KV heads are stored in different formats (a head plan's `kv_formats`): one quantized layer per
group of heads with the same storage, and the view that puts the groups' views back in head order."""

from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin

from ..batch_ops import BatchOps
from .layer import KVCacheError, QuantizedKVLayer, sum_parts
from .view import KVView


class MixedKVView:
    """One layer's keys and values as several KVViews: `parts` pairs each view with the heads it serves (its
    head i is head `positions[i]` of this view). Attention runs part by part: a head reads only its own part."""

    def __init__(self, layer_idx: int, parts: list[tuple[KVView, list[int]]], num_heads: int):
        self.layer_idx, self.parts, self._num_heads = layer_idx, parts, num_heads

    @property
    def num_heads(self) -> int:
        return self._num_heads

    @property
    def num_tokens(self) -> int:
        return self.parts[0][0].num_tokens

    @property
    def device(self) -> torch.device:
        return self.parts[0][0].device

    @property
    def num_blocks(self) -> int:
        """The most quantized blocks of any part (attention over a view with none is plain sdpa)."""
        return max(view.num_blocks for view, _ in self.parts)

    def index_select(self, dim: int, index: torch.Tensor) -> MixedKVView:
        """Gather heads (dim 1), e.g. one copy of a KV head per FA query head; each part gathers its own."""
        if dim != 1:
            raise NotImplementedError("a KV view can only gather heads (dim 1)")
        wanted = [int(i) for i in index]
        parts = []
        for view, positions in self.parts:
            outs = [j for j, h in enumerate(wanted) if h in positions]
            if outs:
                local = torch.tensor([positions.index(wanted[j]) for j in outs], device=view.device)
                parts.append((view.index_select(1, local), outs))
        return MixedKVView(self.layer_idx, parts, len(wanted))

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every key and value, dequantized, in head order: [B, H, T, D] each (tests, plain attention)."""
        keys = values = None
        for view, positions in self.parts:
            k, v = view.dense()
            if keys is None:
                keys = k.new_empty(k.shape[0], self.num_heads, *k.shape[2:])
                values = v.new_empty(v.shape[0], self.num_heads, *v.shape[2:])
            keys[:, positions], values[:, positions] = k.to(keys.dtype), v.to(values.dtype)
        return keys, values

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return KVView.__getattr__(self, name)  # the same error: the model is not running hydrahead's attention


def view_parts(view) -> list[tuple[KVView, list[int]]]:
    """(KVView, the heads it serves) for a KVView or a MixedKVView."""
    return view.parts if isinstance(view, MixedKVView) else [(view, list(range(view.num_heads)))]


class MixedKVLayer(BatchOps, CacheLayerMixin):
    """The cached KV heads of one layer in groups (positions, QuantizedKVLayer): each group's heads are stored in
    its layer's formats, sink, window and block size. `update` returns a MixedKVView of every token so far."""

    is_compileable = False
    is_croppable = False  # quantized tokens cannot be put back as they were

    def __init__(self, layer_idx: int, groups: list[tuple[list[int], QuantizedKVLayer]]):
        super().__init__()
        positions = sorted(p for group, _ in groups for p in group)
        if positions != list(range(len(positions))):
            raise KVCacheError(f"layer {layer_idx}: the groups must hold every KV head once, got {[g for g, _ in groups]}")
        self.layer_idx, self.groups, self.num_heads = layer_idx, groups, len(positions)
        self._index: dict[torch.device, list[torch.Tensor]] = {}
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[MixedKVView, MixedKVView]:
        """Store key/value states [B, H, T, D], each group its own heads."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        device = key_states.device
        if device not in self._index:
            self._index[device] = [torch.tensor(group, device=device) for group, _ in self.groups]
        parts = []
        for (group, layer), index in zip(self.groups, self._index[device]):
            view, _ = layer.update(key_states.index_select(1, index), value_states.index_select(1, index))
            parts.append((view, group))
        self.length += key_states.shape[-2]
        view = MixedKVView(self.layer_idx, parts, self.num_heads)
        return view, view

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def parts(self) -> dict[str, int]:
        return sum_parts(layer for _, layer in self.groups)

    def nbytes(self) -> int:
        return sum(self.parts().values())

    @property
    def quantized_tokens(self) -> int:
        return max(layer.quantized_tokens for _, layer in self.groups)

    def reset(self) -> None:
        for _, layer in self.groups:
            layer.reset()
        self.length = 0
        self.is_initialized = False

    def map_batch(self, fn) -> None:
        for _, layer in self.groups:
            layer.map_batch(fn)

    def crop(self, tokens_to_remove: int) -> None:
        raise KVCacheError("a quantized KV cache cannot be cropped (quantized tokens cannot be restored)")
