"""What a quantized KV layer hands to attention in place of its key and value tensors."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .base import KVFormat, QTensor
from .packed import PackedBlocks


CHUNK_TOKENS = 2048  # quantized tokens decoded at once: large enough to amortise the per-call costs, small
# enough that a chunk's dequantized keys and values stay a few MiB (8 heads x 128 x 2048 x 4 B = 8 MiB each)


class KVView:
    """One layer's keys and values in token order: the high-precision sink, the quantized blocks, then the
    high-precision recent window (the step's new tokens last).

    `chunks()` hands the quantized blocks out as a few ranges of up to CHUNK_TOKENS tokens, read in place
    from the layer's packed buffers, so attention over the view holds one chunk dequantized at a time. A
    view is a snapshot of the layer's first `num_blocks` blocks and of its recent rows: the layer may quantize
    part of its window after handing it out, and the view still sees those tokens in high precision for the
    step that wrote them. It reads the layer's buffers in place, so it is valid until the layer's next update.
    """

    def __init__(self, layer_idx: int, sink: tuple[torch.Tensor, torch.Tensor], packed_keys: PackedBlocks,
                 packed_values: PackedBlocks, num_blocks: int, recent: tuple[torch.Tensor, torch.Tensor],
                 key_format: KVFormat, value_format: KVFormat, heads: torch.Tensor | None = None):
        self.layer_idx = layer_idx
        self.sink, self.recent = sink, recent  # [B, H, S | R, D] each
        self.packed_keys, self.packed_values, self.num_blocks = packed_keys, packed_values, num_blocks
        self.block_size = packed_keys.block_size
        self.key_format, self.value_format = key_format, value_format
        self.heads = heads  # KV head per output head, when a caller gathers heads (FA branch of a hybrid)

    @property
    def blocks(self) -> list[tuple[QTensor, QTensor]]:
        """Each quantized block of the snapshot as its formats returned it (inspection and tests; attention reads
        `chunks()`)."""
        return [(self.packed_keys.block(i), self.packed_values.block(i)) for i in range(self.num_blocks)]

    @property
    def quantized_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def num_tokens(self) -> int:
        return self.sink[0].shape[-2] + self.quantized_tokens + self.recent[0].shape[-2]

    @property
    def device(self) -> torch.device:
        return self.recent[0].device

    @property
    def num_heads(self) -> int:
        return len(self.heads) if self.heads is not None else self.recent[0].shape[1]

    def index_select(self, dim: int, index: torch.Tensor) -> KVView:
        """Gather KV heads (dim 1), lazily: applied to each chunk as it is decoded."""
        if dim != 1:
            raise NotImplementedError("a KV view can only gather heads (dim 1)")
        index = index if self.heads is None else self.heads[index.to(self.heads.device)]
        return KVView(self.layer_idx, self.sink, self.packed_keys, self.packed_values, self.num_blocks, self.recent,
                      self.key_format, self.value_format, index)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.heads is None else x.index_select(1, self.heads.to(x.device))

    def gather_heads(self, q: QTensor) -> QTensor:
        """A quantized chunk restricted to this view's heads (dim 1 of every stored tensor but a scalar)."""
        if self.heads is None:
            return q
        heads = self.heads.to(q.payload.device)
        scales = {name: t if t.dim() < 2 else t.index_select(1, heads) for name, t in q.scales.items()}
        shape = (q.shape[0], len(heads), *q.shape[2:])
        return QTensor(q.format, shape, q.dtype, q.payload.index_select(1, heads), scales)

    def quantized(self, start: int = 0, end: int | None = None) -> tuple[QTensor, QTensor]:
        """Blocks [start, end) of the snapshot as one QTensor each for keys and values, read in place."""
        end = self.num_blocks if end is None else end
        return self.packed_keys.range(start, end), self.packed_values.range(start, end)

    def chunks(self, chunk_tokens: int = CHUNK_TOKENS
               ) -> Iterator[tuple[int, torch.Tensor | QTensor, torch.Tensor | QTensor]]:
        """(first token, keys, values) per chunk: the sink, the quantized blocks in ranges of up to `chunk_tokens`
        tokens (whole blocks; QTensors until `scores` / `values`), then the recent tokens."""
        sink = self.sink[0].shape[-2]
        if sink:
            yield 0, *self.sink
        per_chunk = max(1, chunk_tokens // self.block_size)
        for first in range(0, self.num_blocks, per_chunk):
            last = min(first + per_chunk, self.num_blocks)
            yield sink + first * self.block_size, *self.quantized(first, last)
        if self.recent[0].shape[-2]:
            yield sink + self.quantized_tokens, *self.recent

    def scores(self, query: torch.Tensor, keys: torch.Tensor | QTensor) -> torch.Tensor:
        """query [B, H, Q, D] (already scaled) . keys [B, H, t, D] -> float32 [B, H, Q, t]."""
        if isinstance(keys, QTensor):
            if self.heads is None and hasattr(self.key_format, "scores"):
                # e.g. tq4 rotates the query once instead of un-rotating every key of the chunk
                return self.key_format.scores(query, keys)
            keys = self.key_format.dequantize(keys)
        return query.float() @ self._gather(keys).float().mT

    def values(self, values: torch.Tensor | QTensor) -> torch.Tensor:
        if isinstance(values, QTensor):
            values = self.value_format.dequantize(values)
        return self._gather(values).float()

    def gather(self, heads: torch.Tensor, index: torch.Tensor, score_space: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of selected tokens only: heads [S] (this view's heads), index [B, S, k] token
        positions -> float32 [B, S, k, D] each. Quantized tokens are picked from the packed buffers in place and
        decoded alone. With `score_space` the keys are in the space the key format scores in (`score_keys`):
        attend to them with `key_format.key_query(q)` (tq4: the query rotated once instead of every key unrotated)."""
        B, S, k = index.shape
        kv = heads if self.heads is None else self.heads.to(heads.device)[heads]  # [S], heads as stored
        b = torch.arange(B, device=index.device)[:, None, None].expand(B, S, k)
        h = kv.to(index.device)[None, :, None].expand(B, S, k)
        keys = torch.empty(B, S, k, self.key_format.head_dim, device=index.device)
        values = torch.empty_like(keys)
        sink, quantized = self.sink[0].shape[-2], self.quantized_tokens
        parts = ((0, sink, self.sink), (sink, sink + quantized, None), (sink + quantized, self.num_tokens, self.recent))
        for first, end, tensors in parts:
            mine = (index >= first) & (index < end)
            if first == end or not mine.any():
                continue
            at = (b[mine], h[mine], index[mine] - first)
            if tensors is None:
                k_q, v_q = self.quantized()
                pick = self.key_format.score_keys_at if score_space else self.key_format.dequantize_at
                keys[mine] = pick(k_q, at)
                values[mine] = self.value_format.dequantize_at(v_q, at)
            else:
                plain = tensors[0][at].float()
                keys[mine] = self.key_format.key_query(plain) if score_space else plain  # an orthogonal map: q.k kept
                values[mine] = tensors[1][at].float()
        return keys, values

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every key and value at once, quantized blocks dequantized: [B, H, T, D] each (tests, plain attention)."""
        keys, values = [], []
        for _, k, v in self.chunks():
            keys.append(self._gather(self.key_format.dequantize(k) if isinstance(k, QTensor) else k))
            values.append(self._gather(self.value_format.dequantize(v) if isinstance(v, QTensor) else v))
        if not keys:
            return self._gather(self.recent[0]), self._gather(self.recent[1])
        return torch.cat(keys, dim=-2), torch.cat(values, dim=-2)

    def __getattr__(self, name: str):
        # reached only for names a KVView lacks: someone is treating it as a tensor, i.e. the model is not
        # running the blockwise attention that reads it
        if name.startswith("__"):
            raise AttributeError(name)
        from .attention import ATTENTION_NAME
        from .layer import KVCacheError

        raise KVCacheError(
            f"layer {self.layer_idx}: a QuantizedKVCache was used with another attention implementation (it asked "
            f"for .{name}); run the model under hydrahead.kv.blockwise_attention(model) or set "
            f"model.set_attn_implementation({ATTENTION_NAME!r})"
        )
