"""One layer of the quantized KV cache: a high-precision sink and recent window around blocks quantized once."""

from __future__ import annotations

import dataclasses

import torch
from transformers.cache_utils import DynamicLayer

from ..errors import HydraheadError
from .base import KVFormat, KVFormatError, QTensor
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


class QuantizedKVLayer(DynamicLayer):
    """Keys and values of one attention layer: the first `sink` tokens and the last `window` to
    `window + block_size - 1` tokens in the model's dtype, everything between in quantized blocks.

    When the recent part reaches `window + block_size` tokens, its oldest `block_size` tokens are quantized
    with the key and value formats, once: a block is never decoded and encoded again (transformers'
    QuantizedCache re-quantizes its whole past at every flush, which compounds the error). The quantization
    happens after the view for the current step is taken, so a prompt is attended in full precision by its
    own prefill and quantized right after. `self.keys` / `self.values` hold the recent window.
    """

    is_croppable = False  # quantized tokens cannot be put back as they were

    def __init__(self, layer_idx: int, key_format: KVFormat, value_format: KVFormat, window: int = 128, sink: int = 4,
                 block_size: int = 64):
        super().__init__()
        check_sizes(window, sink, block_size)
        self.layer_idx, self.key_format, self.value_format = layer_idx, key_format, value_format
        self.window, self.sink, self.block_size = window, sink, block_size
        self.sink_keys: torch.Tensor | None = None  # [B, H, <= sink, D]
        self.sink_values: torch.Tensor | None = None
        self.blocks: list[tuple[QTensor, QTensor]] = []  # each [B, H, block_size, D]
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        empty = key_states[..., :0, :]  # [B, H, 0, D]
        self.keys, self.values = empty, value_states[..., :0, :]
        self.sink_keys, self.sink_values = empty, value_states[..., :0, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[KVView, KVView]:
        """Store key/value states [B, H, T, D]; returns one KVView of every token so far, for keys and values alike."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        into_sink = min(self.sink - self.sink_keys.shape[-2], key_states.shape[-2])
        if into_sink > 0:
            self.sink_keys = torch.cat([self.sink_keys, key_states[..., :into_sink, :]], dim=-2)
            self.sink_values = torch.cat([self.sink_values, value_states[..., :into_sink, :]], dim=-2)
        self.keys = torch.cat([self.keys, key_states[..., into_sink:, :]], dim=-2)
        self.values = torch.cat([self.values, value_states[..., into_sink:, :]], dim=-2)
        self.length += key_states.shape[-2]
        view = KVView(self.layer_idx, (self.sink_keys, self.sink_values), list(self.blocks), (self.keys, self.values),
                      self.key_format, self.value_format)
        self._flush()
        return view, view

    def _flush(self) -> None:
        n = (self.keys.shape[-2] - self.window) // self.block_size
        if n <= 0:
            return
        for i in range(n):
            part = slice(i * self.block_size, (i + 1) * self.block_size)
            self.blocks.append((self._quantize(self.keys[..., part, :], "keys", self.key_format),
                                self._quantize(self.values[..., part, :], "values", self.value_format)))
        # a copy, so that the window does not keep the whole prefill's tensor alive
        rest = n * self.block_size
        self.keys, self.values = self.keys[..., rest:, :].clone(), self.values[..., rest:, :].clone()

    def _quantize(self, x: torch.Tensor, what: str, fmt: KVFormat) -> QTensor:
        bad = ~torch.isfinite(x)
        if bad.any():
            # one NaN would poison the scale or norm of its whole group, so the block is refused, not stored
            first = self.sink + len(self.blocks) * self.block_size
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
        """Stored bytes by part; `nbytes()` is their sum."""
        payload = sum(k.payload.nbytes + v.payload.nbytes for k, v in self.blocks)
        scales = sum(k.nbytes + v.nbytes for k, v in self.blocks) - payload
        return {"sink": _nbytes(self.sink_keys, self.sink_values), "window": _nbytes(self.keys, self.values),
                "quantized_payload": payload, "quantized_scales": scales}

    def nbytes(self) -> int:
        return sum(self.parts().values())

    @property
    def quantized_tokens(self) -> int:
        return len(self.blocks) * self.block_size

    def reset(self) -> None:
        self.sink_keys = self.sink_values = None
        self.blocks = []
        self.length = 0
        super().reset()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda t: t.index_select(0, indices.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def _map_batch(self, fn) -> None:
        """Apply a batch-dim operation to every stored tensor; quantized codes are moved, never re-encoded."""
        if not self.is_initialized:
            return
        self.keys, self.values, self.sink_keys, self.sink_values = map(
            fn, (self.keys, self.values, self.sink_keys, self.sink_values))
        self.blocks = [(_map_qtensor(k, fn), _map_qtensor(v, fn)) for k, v in self.blocks]

    def crop(self, tokens_to_remove: int) -> None:
        raise KVCacheError("a quantized KV cache cannot be cropped (quantized tokens cannot be restored)")


def _map_qtensor(q: QTensor, fn) -> QTensor:
    # scalars (a per-tensor scale) are shared by the whole batch; every other tensor leads with the batch dim
    scales = {k: fn(t) if t.dim() else t for k, t in q.scales.items()}
    payload = fn(q.payload)
    return dataclasses.replace(q, payload=payload, scales=scales, shape=(payload.shape[0], *q.shape[1:]))


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def sum_parts(layers) -> dict[str, int]:
    total: dict[str, int] = {}
    for layer in layers:
        parts = layer.parts() if hasattr(layer, "parts") else {"window": layer.nbytes()}
        for name, n in parts.items():
            total[name] = total.get(name, 0) + n
    return total
