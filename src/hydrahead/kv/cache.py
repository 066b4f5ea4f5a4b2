"""The quantized KV cache: a transformers Cache whose layers keep sink and recent tokens in high precision and
everything between in 4-bit (or fp8, bf16) blocks quantized once, read by the blockwise attention.

    with blockwise_attention(model):
        model.generate(ids, past_key_values=quantized_cache(model.config, "tq4:int4"), max_new_tokens=32)

A hydrahead hybrid gets a QuantizedHydraCache (its GDN states beside the quantized FA keys and values);
`quantized_cache` picks the right one. For `greedy_generate` / `evaluate`, pass
`cache_factory=KVCacheFactory("tq4:int4")`.

Every quantized cache is built from a head plan with `kv_formats` (one format for every head is the plan
`with_kv_formats(spec)`), so KV heads may differ in format, sink, window and block size: a layer whose heads
all agree is one QuantizedKVLayer, any other a MixedKVLayer. `plan_cache(config, plan)` makes the cache a
plan asks for; its `nbytes()` equals `plan.kv_bytes(tokens, batch, dtype)` (plus the GDN states).
"""

from __future__ import annotations

from transformers.cache_utils import Cache

from ..cache import HydraCache, KVCache, KVLayer
from ..configuration import hybrid_spec, is_hybrid
from ..plan import HeadPlan, PlanError
from .attention import use_blockwise_attention
from .layer import KVCacheError, QuantizedKVLayer, check_sizes, sum_parts
from .mixed import MixedKVLayer
from .spec import canonical_spec, parse_cache_spec


class QuantizedKVCache(Cache):
    """One quantized layer per decoder layer of `config`, keys and values in the formats of `kv_format`
    ("KEYS:VALUES", e.g. "tq4:int4"; see `hydrahead.kv.spec`), or per KV head as `plan` says (then
    kv_format and the sizes are the plan's). `nbytes()` is what it really stores."""

    def __init__(self, config, kv_format: str = "tq4:int4", window: int = 128, sink: int = 4, block_size: int = 64,
                 plan: HeadPlan | None = None):
        if is_hybrid(config):
            raise KVCacheError("a hydrahead hybrid keeps its KV in a HydraCache: use QuantizedHydraCache(config, ...) "
                               "or quantized_cache(config, ...)")
        config = config.get_text_config(decoder=True)
        kinds = set(getattr(config, "layer_types", None) or ["full_attention"]) - {"full_attention"}
        if kinds:
            raise KVCacheError(f"a quantized KV cache serves full-attention layers only; this model also has {sorted(kinds)}")
        if plan is None:
            plan = HeadPlan.full_attention(config)
            _check_format(kv_format, window, sink, block_size, plan.shape.head_dim)
            plan = plan.with_kv_formats(kv_format, sink, window, block_size)
        _check_plan(plan, config)
        if plan.num_gdn:
            raise KVCacheError("a plain model caches every KV head: its plan must keep every head FA")
        self.plan = plan
        _describe_plan(self, plan)
        super().__init__(layers=plan_layers(plan))

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def parts(self) -> dict[str, int]:
        """Stored bytes by part, summed over layers: sink, window, quantized payload and scales."""
        return sum_parts(self.layers)

    @property
    def quantized_tokens(self) -> int:
        return max((getattr(layer, "quantized_tokens", 0) for layer in self.layers), default=0)

    def describe(self) -> dict:
        return {"kv_format": self.spec, "window": self.window, "sink": self.sink, "block_size": self.block_size}


class QuantizedHydraCache(HydraCache):
    """A hybrid's cache with its FA heads' keys and values in quantized layers (as QuantizedKVCache) and its
    GDN states as in any HydraCache."""

    def __init__(self, config, kv_format: str = "tq4:int4", window: int = 128, sink: int = 4, block_size: int = 64,
                 plan: HeadPlan | None = None):
        own = hybrid_spec(config)[0]
        if plan is None:
            _check_format(kv_format, window, sink, block_size, own.shape.head_dim)
            plan = own.with_kv_formats(kv_format, sink, window, block_size)
        elif plan.fa_heads != own.fa_heads:
            raise KVCacheError("the plan's FA heads differ from the hybrid's: a cache stores the heads the model has")
        _check_plan(plan, config)
        self.plan = plan
        _describe_plan(self, plan)
        super().__init__(config, kv_layers=plan_layers(plan))

    def parts(self) -> dict[str, int]:
        """Stored bytes by part, summed over layers: sink, window, quantized payload and scales, GDN states."""
        return {**sum_parts(self.layers), "gdn_state": sum(state.nbytes() for state in self.gdn)}

    @property
    def quantized_tokens(self) -> int:
        return max((getattr(layer, "quantized_tokens", 0) for layer in self.layers), default=0)

    def describe(self) -> dict:
        return {"kv_format": self.spec, "window": self.window, "sink": self.sink, "block_size": self.block_size}


def _check_format(kv_format: str, window: int, sink: int, block_size: int, head_dim: int) -> None:
    """The format's own error (unknown name, a head_dim it cannot serve) before it goes into a plan."""
    check_sizes(window, sink, block_size)
    for choice in parse_cache_spec(kv_format):
        choice.build(head_dim)


def _check_plan(plan: HeadPlan, config) -> None:
    if plan.kv_formats is None:
        raise KVCacheError("the plan has no kv_formats: a plain cache stores its KV heads as the model computes them")
    try:
        plan.check_model(config)
    except PlanError as e:
        raise KVCacheError(str(e)) from None


def _describe_plan(cache, plan: HeadPlan) -> None:
    """The spec and sizes a cache reports: the plan's when every cached head agrees, else "per head"."""
    heads = {plan.head_kv(layer, kv) for layer in range(plan.shape.num_layers) for kv in plan.fa_kv_heads(layer)}
    one = next(iter(heads)) if len(heads) == 1 else None
    cache.spec = one.spec if one else "per head"
    cache.window, cache.sink, cache.block_size = (one.window, one.sink, one.block_size) if one else (None, None, None)
    if one:
        keys, values = parse_cache_spec(one.spec)
        cache.key_format, cache.value_format = keys.build(plan.shape.head_dim), values.build(plan.shape.head_dim)


def plan_layers(plan: HeadPlan) -> list:
    """One cache layer per decoder layer of a plan with kv_formats: a QuantizedKVLayer where the layer's cached
    KV heads share their storage, a MixedKVLayer where they differ, a plain KVLayer where none is cached."""
    formats: dict[str, object] = {}

    def build(spec: str):
        if spec not in formats:
            keys, values = parse_cache_spec(spec)
            formats[spec] = (keys.build(plan.shape.head_dim), values.build(plan.shape.head_dim))
        return formats[spec]

    layers = []
    for i in range(plan.shape.num_layers):
        groups = [(positions, QuantizedKVLayer(i, *build(head.spec), head.window, head.sink, head.block_size))
                  for head, positions in plan.kv_groups(i)]
        if not groups:
            layers.append(KVLayer())  # an all-GDN layer of a hybrid: nothing is ever stored
        elif len(groups) == 1:
            layers.append(groups[0][1])
        else:
            layers.append(MixedKVLayer(i, groups))
    return layers


def quantized_cache(config, kv_format: str = "tq4:int4", window: int = 128, sink: int = 4, block_size: int = 64):
    """The quantized cache for a model of `config`: a QuantizedHydraCache for a hybrid, else a QuantizedKVCache."""
    cls = QuantizedHydraCache if is_hybrid(config) else QuantizedKVCache
    return cls(config, kv_format, window, sink, block_size)


def plan_cache(config, plan: HeadPlan | None = None):
    """The cache `plan` asks for (default: a hybrid's own plan): quantized per head where it has kv_formats,
    the model's dtype otherwise (a HydraCache for a hybrid, a KVCache for any other model: both append in place)."""
    if plan is None and is_hybrid(config):
        plan = hybrid_spec(config)[0]
    if plan is None or plan.kv_formats is None:
        if is_hybrid(config):
            return HydraCache(config, kv_layers=[KVLayer() for _ in range(config.num_hidden_layers)])
        return KVCache(config)
    return (QuantizedHydraCache if is_hybrid(config) else QuantizedKVCache)(config, plan=plan)



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
