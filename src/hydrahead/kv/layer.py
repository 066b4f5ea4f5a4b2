"""One layer of the quantized KV cache: a high-precision sink and recent window around blocks quantized once."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from ..batch_ops import BatchOps
from ..errors import HydraheadError
from .base import KVFormat, KVFormatError, QTensor
from .packed import PackedBlocks
from .view import KVView

BLOCK_MULTIPLE = 32  # int4 groups keys per channel over 32 tokens; a block must hold whole groups


class KVCacheError(HydraheadError, ValueError):
    pass


def check_sizes(window: int, sink: int, block_size: int) -> None:
    for name, value, least in (("window", window, 0), ("sink", sink, 0), ("block size", block_size, BLOCK_MULTIPLE)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise KVCacheError(f"the KV {name} must be an integer >= {least} (tokens), got {value!r}")
    if block_size % BLOCK_MULTIPLE:
        raise KVCacheError(f"the KV block size must be a multiple of {BLOCK_MULTIPLE} tokens (whole int4 key groups), "
                           f"got {block_size}")


class QuantizedKVLayer(BatchOps, DynamicLayer):
    """Keys and values of one attention layer: the first `sink` tokens and the last `window` to
    `window + block_size - 1` tokens in the model's dtype, everything between in quantized blocks.

    When the recent part reaches `window + block_size` tokens, its oldest `block_size` tokens are quantized
    with the key and value formats, once: a block is never decoded and encoded again (transformers'
    QuantizedCache re-quantizes its whole past at every flush, which compounds the error). The quantization
    happens after the view for the current step is taken, so a prompt is attended in full precision by its
    own prefill and quantized right after.

    Nothing is copied per step: the sink and the recent tokens live in preallocated slabs written in place
    (`window + block_size` rows for the recent part), the quantized blocks in packed buffers that grow by
    doubling (`PackedBlocks`). `self.keys` / `self.values` are the live recent rows (views), `sink_keys` /
    `sink_values` the sink's.
    """

    is_croppable = False  # quantized tokens cannot be put back as they were

    def __init__(self, layer_idx: int, key_format: KVFormat, value_format: KVFormat, window: int = 128, sink: int = 4,
                 block_size: int = 64):
        super().__init__()
        check_sizes(window, sink, block_size)
        self.layer_idx, self.key_format, self.value_format = layer_idx, key_format, value_format
        self.window, self.sink, self.block_size = window, sink, block_size
        self._clear()

    def _clear(self) -> None:
        self.sink_keys: torch.Tensor | None = None  # [B, H, <= sink, D], views of the sink slabs
        self.sink_values: torch.Tensor | None = None
        self._sink: tuple[torch.Tensor, torch.Tensor] | None = None  # [B, H, sink, D] each
        self._recent: tuple[torch.Tensor, torch.Tensor] | None = None  # [B, H, window + block_size, D] each
        self._start = 0  # the first live row of the recent slabs; rows before it are quantized already
        self.packed_keys = PackedBlocks(self.key_format, self.block_size)
        self.packed_values = PackedBlocks(self.value_format, self.block_size)
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        B, H, _, D = key_states.shape
        rows = self.window + self.block_size
        Dv = value_states.shape[-1]
        self._sink = (key_states.new_empty(B, H, self.sink, D), value_states.new_empty(B, H, self.sink, Dv))
        self._recent = (key_states.new_empty(B, H, rows, D), value_states.new_empty(B, H, rows, Dv))
        self._set_views(0, 0)

    def _set_views(self, sink: int, recent: int) -> None:
        self.sink_keys, self.sink_values = (t[..., :sink, :] for t in self._sink)
        self.keys, self.values = (t[..., self._start:self._start + recent, :] for t in self._recent)

    @property
    def blocks(self) -> list[tuple[QTensor, QTensor]]:
        """Every quantized block as its formats' `quantize` returned it (views into the packed buffers)."""
        return [(self.packed_keys.block(i), self.packed_values.block(i)) for i in range(self.packed_keys.num_blocks)]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[KVView, KVView]:
        """Store key/value states [B, H, T, D]; returns one KVView of every token so far, for keys and values alike.

        The view reads the layer's slabs in place: it is valid until the layer's next update."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        sink = self.sink_keys.shape[-2]
        into_sink = min(self.sink - sink, key_states.shape[-2])
        if into_sink > 0:
            self._sink[0][..., sink:sink + into_sink, :] = key_states[..., :into_sink, :]
            self._sink[1][..., sink:sink + into_sink, :] = value_states[..., :into_sink, :]
            sink += into_sink
        new = (key_states[..., into_sink:, :], value_states[..., into_sink:, :])
        recent, T = self.keys.shape[-2], new[0].shape[-2]
        rows = self._recent[0].shape[-2]
        if self._start + recent + T > rows and self._start:
            # rows before _start were quantized by the last update and its view has been used since
            self._compact(recent)
        in_slab = recent + T <= rows
        if in_slab:
            for slab, x in zip(self._recent, new):
                slab[..., self._start + recent:self._start + recent + T, :] = x
            self._set_views(sink, recent + T)
            live = (self.keys, self.values)
        else:
            # a prefill or a chunk longer than the slab: this step attends the new tokens (after what the slab
            # held, if anything), blocks are quantized from them, and the slab takes the rest
            live = new if not recent else tuple(torch.cat([old, x], dim=-2)
                                                for old, x in zip((self.keys, self.values), new))
            self._set_views(sink, 0)
        self.length += key_states.shape[-2]
        view = KVView(self.layer_idx, (self.sink_keys, self.sink_values), self.packed_keys, self.packed_values,
                      self.packed_keys.num_blocks, live, self.key_format, self.value_format)
        self._flush(live, sink, in_slab)
        return view, view

    def _compact(self, recent: int) -> None:
        """Move the live recent rows to the top of the slabs, in pieces no longer than the shift so that no piece
        overlaps its destination."""
        shift = self._start
        for slab in self._recent:
            for i in range(0, recent, shift):
                n = min(shift, recent - i)
                slab[..., i:i + n, :] = slab[..., shift + i:shift + i + n, :]
        self._start = 0

    def _flush(self, live: tuple[torch.Tensor, torch.Tensor], sink: int, in_slab: bool) -> None:
        recent = live[0].shape[-2]
        n = (recent - self.window) // self.block_size
        if n <= 0:
            return
        for i in range(n):
            part = slice(i * self.block_size, (i + 1) * self.block_size)
            k = self._quantize(live[0][..., part, :], "keys", self.key_format)
            v = self._quantize(live[1][..., part, :], "values", self.value_format)
            self.packed_keys.append(k, reserve=n)
            self.packed_values.append(v, reserve=n)
        rest = n * self.block_size
        if in_slab:
            self._start += rest  # the quantized rows stay in the slab (this step's view reads them) until next time
            self._set_views(sink, recent - rest)
        else:
            self._start = 0
            for slab, x in zip(self._recent, live):
                slab[..., :recent - rest, :] = x[..., rest:, :]
            self._set_views(sink, recent - rest)

    def _quantize(self, x: torch.Tensor, what: str, fmt: KVFormat) -> QTensor:
        bad = ~torch.isfinite(x)
        if bad.any():
            # one NaN would poison the scale or norm of its whole group, so the block is refused, not stored
            first = self.sink + self.packed_keys.num_blocks * self.block_size
            nan = int(torch.isnan(x).sum())
            raise KVCacheError(
                f"layer {self.layer_idx}: {int(bad.sum())} non-finite {what} ({nan} NaN, {int(bad.sum()) - nan} inf) "
                f"in tokens {first}..{first + x.shape[-2] - 1}, which were about to be quantized to {fmt.name}"
            )
        try:
            return fmt.quantize(x)
        except KVFormatError as e:
            raise KVCacheError(f"layer {self.layer_idx}: {what}: {e}") from None

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def parts(self) -> dict[str, int]:
        """Stored bytes by part (of the tokens held, not the slabs' or buffers' spare room); `nbytes()` is their sum."""
        k_payload, k_scales = self.packed_keys.nbytes()
        v_payload, v_scales = self.packed_values.nbytes()
        return {"sink": _nbytes(self.sink_keys, self.sink_values), "window": _nbytes(self.keys, self.values),
                "quantized_payload": k_payload + v_payload, "quantized_scales": k_scales + v_scales}

    def nbytes(self) -> int:
        return sum(self.parts().values())

    @property
    def quantized_tokens(self) -> int:
        return self.packed_keys.num_blocks * self.block_size

    def reset(self) -> None:
        self._clear()
        super().reset()

    def map_batch(self, fn) -> None:
        """Apply a batch-dim operation to every stored tensor; quantized codes are moved, never re-encoded."""
        if not self.is_initialized:
            return
        sink, recent = self.sink_keys.shape[-2], self.keys.shape[-2]
        self._sink = tuple(fn(t) for t in self._sink)
        self._recent = tuple(fn(t) for t in self._recent)
        self._set_views(sink, recent)
        self.packed_keys.map_batch(fn)
        self.packed_values.map_batch(fn)

    def crop(self, tokens_to_remove: int) -> None:
        raise KVCacheError("a quantized KV cache cannot be cropped (quantized tokens cannot be restored)")


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def sum_parts(layers) -> dict[str, int]:
    total: dict[str, int] = {}
    for layer in layers:
        parts = layer.parts() if hasattr(layer, "parts") else {"window": layer.nbytes()}
        for name, n in parts.items():
            total[name] = total.get(name, 0) + n
    return total
