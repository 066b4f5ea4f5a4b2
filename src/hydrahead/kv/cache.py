"""The quantized KV cache: a transformers Cache whose layers keep sink and recent tokens in high precision and
everything between in 4-bit (or fp8, bf16) blocks quantized once, read by the blockwise attention.

    with blockwise_attention(model):
        model.generate(ids, past_key_values=quantized_cache(model.config, "tq4:int4"), max_new_tokens=32)

A hydrahead hybrid gets a QuantizedHydraCache (its GDN states beside the quantized FA keys and values);
`quantized_cache` picks the right one. For `greedy_generate` / `evaluate`, pass
`cache_factory=KVCacheFactory("tq4:int4")`.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from ..cache import HydraCache
from ..configuration import is_hybrid
from ..plan import HeadPlan
from .attention import use_blockwise_attention
from .layer import KVCacheError, QuantizedKVLayer, _nbytes, check_sizes
from .spec import canonical_spec, parse_cache_spec


class QuantizedKVCache(Cache):
    """One quantized layer per decoder layer of `config`, keys and values in the formats of `kv_format`
    ("KEYS:VALUES", e.g. "tq4:int4"; see `hydrahead.kv.spec`). `nbytes()` is what it really stores."""

    def __init__(self, config, kv_format: str = "tq4:int4", window: int = 128, sink: int = 4, block_size: int = 64):
        check_sizes(window, sink, block_size)
        if is_hybrid(config):
            raise KVCacheError("a hydrahead hybrid keeps its KV in a HydraCache: use QuantizedHydraCache(config, ...) "
                               "or quantized_cache(config, ...)")
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
        super().__init__(layers=quantized_layers(config, self.key_format, self.value_format, window, sink, block_size))

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def parts(self) -> dict[str, int]:
        """Stored bytes by part, summed over layers: sink, window, quantized payload and scales."""
        return _sum_parts(self.layers)

    @property
    def quantized_tokens(self) -> int:
        return max((layer.quantized_tokens for layer in self.layers), default=0)

    def describe(self) -> dict:
        return {"kv_format": self.spec, "window": self.window, "sink": self.sink, "block_size": self.block_size}


class QuantizedHydraCache(HydraCache):
    """A hybrid's cache with its FA heads' keys and values in quantized layers (as QuantizedKVCache) and its
    GDN states as in any HydraCache."""

    def __init__(self, config, kv_format: str = "tq4:int4", window: int = 128, sink: int = 4, block_size: int = 64):
        check_sizes(window, sink, block_size)
        key_choice, value_choice = parse_cache_spec(kv_format)
        head_dim = HeadPlan.from_dict(config.hydrahead["plan"], "config.hydrahead").shape.head_dim
        self.key_format, self.value_format = key_choice.build(head_dim), value_choice.build(head_dim)
        self.spec = f"{key_choice.label}:{value_choice.label}"
        self.window, self.sink, self.block_size = window, sink, block_size
        super().__init__(config, kv_layers=quantized_layers(config, self.key_format, self.value_format, window, sink,
                                                            block_size))

    def parts(self) -> dict[str, int]:
        """Stored bytes by part, summed over layers: sink, window, quantized payload and scales, GDN states."""
        return {**_sum_parts(self.layers), "gdn_state": sum(state.nbytes() for state in self.gdn)}

    @property
    def quantized_tokens(self) -> int:
        return max((layer.quantized_tokens for layer in self.layers), default=0)

    def describe(self) -> dict:
        return {"kv_format": self.spec, "window": self.window, "sink": self.sink, "block_size": self.block_size}


def quantized_layers(config, key_format, value_format, window: int, sink: int, block_size: int) -> list[QuantizedKVLayer]:
    return [QuantizedKVLayer(i, key_format, value_format, window, sink, block_size)
            for i in range(config.num_hidden_layers)]


def quantized_cache(config, kv_format: str = "tq4:int4", window: int = 128, sink: int = 4, block_size: int = 64):
    """The quantized cache for a model of `config`: a QuantizedHydraCache for a hybrid, else a QuantizedKVCache."""
    cls = QuantizedHydraCache if is_hybrid(config) else QuantizedKVCache
    return cls(config, kv_format, window, sink, block_size)


def _sum_parts(layers) -> dict[str, int]:
    total: dict[str, int] = {}
    for layer in layers:
        for name, n in layer.parts().items():
            total[name] = total.get(name, 0) + n
    return total


class KVCacheFactory:
    """A `cache_factory` for `greedy_generate` / `evaluate`: switches the model to the blockwise attention and
    returns a fresh QuantizedKVCache. Checks the spec and sizes when made, before any model runs."""

    def __init__(self, kv_format: str, window: int = 128, sink: int = 4, block_size: int = 64):
        check_sizes(window, sink, block_size)
        self.kv_format = canonical_spec(kv_format)
        self.window, self.sink, self.block_size = window, sink, block_size

    def __call__(self, model) -> QuantizedKVCache:
        use_blockwise_attention(model)
        return quantized_cache(model.config, self.kv_format, self.window, self.sink, self.block_size)

    def describe(self) -> dict:
        return {"kv_format": self.kv_format, "window": self.window, "sink": self.sink, "block_size": self.block_size}
