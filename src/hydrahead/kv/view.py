"""What a quantized KV layer hands to attention in place of its key and value tensors."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .base import KVFormat, QTensor


class KVView:
    """One layer's keys and values in token order: the high-precision sink, the quantized blocks, then the
    high-precision recent window (the step's new tokens last).

    `chunks()` decodes one block at a time, so attention over the view never holds more than one
    dequantized block. A view is a snapshot: the layer may quantize part of its window after handing it
    out, and the view still sees those tokens in high precision for the step that wrote them.
    """

    def __init__(self, layer_idx: int, sink: tuple[torch.Tensor, torch.Tensor], blocks: list[tuple[QTensor, QTensor]],
                 recent: tuple[torch.Tensor, torch.Tensor], key_format: KVFormat, value_format: KVFormat,
                 heads: torch.Tensor | None = None):
        self.layer_idx = layer_idx
        self.sink, self.blocks, self.recent = sink, blocks, recent  # [B, H, S | block | R, D] each
        self.key_format, self.value_format = key_format, value_format
        self.heads = heads  # KV head per output head, when a caller gathers heads (FA branch of a hybrid)

    @property
    def num_tokens(self) -> int:
        block = self.blocks[0][0].num_tokens if self.blocks else 0
        return self.sink[0].shape[-2] + block * len(self.blocks) + self.recent[0].shape[-2]

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
        return KVView(self.layer_idx, self.sink, self.blocks, self.recent, self.key_format, self.value_format, index)

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.heads is None else x.index_select(1, self.heads.to(x.device))

    def chunks(self) -> Iterator[tuple[int, torch.Tensor | QTensor, torch.Tensor | QTensor]]:
        """(first token, keys, values) per chunk; quantized chunks stay QTensors until `scores` / `values`."""
        start = 0
        for keys, values in (self.sink, *self.blocks, self.recent):
            if keys.shape[-2]:
                yield start, keys, values
            start += keys.shape[-2]

    def scores(self, query: torch.Tensor, keys: torch.Tensor | QTensor) -> torch.Tensor:
        """query [B, H, Q, D] (already scaled) . keys [B, H, t, D] -> float32 [B, H, Q, t]."""
        if isinstance(keys, QTensor):
            if self.heads is None and hasattr(self.key_format, "scores"):
                # e.g. tq4 rotates the query once instead of un-rotating every key of the block
                return self.key_format.scores(query, keys)
            keys = self.key_format.dequantize(keys)
        return query.float() @ self._gather(keys).float().mT

    def values(self, values: torch.Tensor | QTensor) -> torch.Tensor:
        if isinstance(values, QTensor):
            values = self.value_format.dequantize(values)
        return self._gather(values).float()

    def gather(self, heads: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of selected tokens only: heads [S] (this view's heads), index [B, S, k] token
        positions -> float32 [B, S, k, D] each. A quantized block decodes just the rows picked from it."""
        B, S, k = index.shape
        stored = self.recent[0].shape[1]
        kv = heads if self.heads is None else self.heads.to(heads.device)[heads]  # [S], heads as stored
        chunks = list(self.chunks())
        starts = torch.tensor([start for start, _, _ in chunks], device=index.device)
        which = torch.bucketize(index, starts, right=True) - 1  # [B, S, k], the chunk of every picked token
        keys = torch.empty(B, S, k, self.key_format.head_dim, device=index.device)
        values = torch.empty_like(keys)
        for c in which.unique().tolist():
            start, k_part, v_part = chunks[c]
            b, s, j = (which == c).nonzero(as_tuple=True)
            length = k_part.num_tokens if isinstance(k_part, QTensor) else k_part.shape[-2]
            rows = (b * stored + kv[s]) * length + index[b, s, j] - start
            keys[b, s, j] = _rows(k_part, rows, self.key_format)
            values[b, s, j] = _rows(v_part, rows, self.value_format)
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


def _rows(x: torch.Tensor | QTensor, rows: torch.Tensor, fmt: KVFormat) -> torch.Tensor:
    """Rows of a chunk [B, H, t, D] (flattened as b, h, t) as float32 [n, D]; quantized ones decoded alone."""
    if isinstance(x, QTensor):
        return fmt.dequantize_rows(x, rows)
    return x.reshape(-1, x.shape[-1])[rows].float()
