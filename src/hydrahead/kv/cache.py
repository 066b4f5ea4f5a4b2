"""The quantized KV cache: a transformers Cache whose layers keep sink and recent tokens in high precision and
everything between in 4-bit (or fp8, bf16) blocks quantized once, read by the blockwise attention.

    with blockwise_attention(model):
        model.generate(ids, past_key_values=QuantizedKVCache(model.config, "tq4:int4"), max_new_tokens=32)

For `greedy_generate` / `evaluate`, pass `cache_factory=KVCacheFactory("tq4:int4")`.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from ..cache import HybridLayer
from .attention import use_blockwise_attention
from .layer import KVCacheError, QuantizedKVLayer, _nbytes, check_sizes
from .spec import canonical_spec, parse_cache_spec


class QuantizedHybridLayer(QuantizedKVLayer, HybridLayer):
    """A head-wise hybrid's layer: its FA heads' KV as in QuantizedKVLayer, its GDN states as in HybridLayer.

    The hybrid attention counts this layer's tokens (`tokens`), since a layer without FA heads stores no KV.
    """

    def get_seq_length(self) -> int:
        return self.tokens

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.tokens + query_length, 0

    def parts(self) -> dict[str, int]:
        return {**super().parts(), "gdn_state": _nbytes(self.conv_state, self.recurrent_state)}

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._select_states(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.conv_state is not None:
            self.conv_state = self.conv_state.repeat_interleave(repeats, dim=0)
        if self.recurrent_state is not None:
            self.recurrent_state = self.recurrent_state.repeat_interleave(repeats, dim=0)


class QuantizedKVCache(Cache):
    """One quantized layer per decoder layer of `config`, keys and values in the formats of `kv_format`
    ("KEYS:VALUES", e.g. "tq4:int4"; see `hydrahead.kv.spec`). `nbytes()` is what it really stores."""

    def __init__(self, config, kv_format: str = "tq4:int4", window: int = 128, sink: int = 4, block_size: int = 64):
        check_sizes(window, sink, block_size)
        config = config.get_text_config(decoder=True)
        kinds = set(getattr(config, "layer_types", None) or ["full_attention"]) - {"full_attention"}
        if kinds:
            raise KVCacheError(f"a quantized KV cache serves full-attention layers only; this model also has {sorted(kinds)}")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        key_choice, value_choice = parse_cache_spec(kv_format)
        # the codecs check the head_dim (power of two for tq4, multiples of 16 / 32 for the block formats)
        self.key_format, self.value_format = key_choice.build(head_dim), value_choice.build(head_dim)
        self.spec = f"{key_choice.label}:{value_choice.label}"
        self.window, self.sink, self.block_size = window, sink, block_size
        layer = QuantizedHybridLayer if getattr(config, "hydrahead", None) else QuantizedKVLayer
        super().__init__(layers=[layer(i, self.key_format, self.value_format, window, sink, block_size)
                                 for i in range(config.num_hidden_layers)])

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def parts(self) -> dict[str, int]:
        """Stored bytes by part, summed over layers: sink, window, quantized payload and scales (and GDN states)."""
        total: dict[str, int] = {}
        for layer in self.layers:
            for name, n in layer.parts().items():
                total[name] = total.get(name, 0) + n
        return total

    @property
    def quantized_tokens(self) -> int:
        return max((layer.quantized_tokens for layer in self.layers), default=0)

    def describe(self) -> dict:
        return {"kv_format": self.spec, "window": self.window, "sink": self.sink, "block_size": self.block_size}


class KVCacheFactory:
    """A `cache_factory` for `greedy_generate` / `evaluate`: switches the model to the blockwise attention and
    returns a fresh QuantizedKVCache. Checks the spec and sizes when made, before any model runs."""

    def __init__(self, kv_format: str, window: int = 128, sink: int = 4, block_size: int = 64):
        check_sizes(window, sink, block_size)
        self.kv_format = canonical_spec(kv_format)
        self.window, self.sink, self.block_size = window, sink, block_size

    def __call__(self, model) -> QuantizedKVCache:
        use_blockwise_attention(model)
        return QuantizedKVCache(model.config, self.kv_format, self.window, self.sink, self.block_size)

    def describe(self) -> dict:
        return {"kv_format": self.kv_format, "window": self.window, "sink": self.sink, "block_size": self.block_size}
