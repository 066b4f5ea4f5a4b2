"""`sparse_decoding(model, roles, budget=...)`: LycheeDecode on an HF Qwen3 / Llama model or on the FA heads of
a hydrahead hybrid, for as long as the `with` block lasts.

    with sparse_decoding(model, plan, budget=4096) as state:
        model.generate(input_ids, max_new_tokens=64)
    print(state.stats.read_fraction)

It switches the model's `attn_implementation` to hydrahead's one attention function ("hydrahead", which also
reads quantized KV caches, so roles and KV formats combine), tells each attention module its layer and its KV
heads' roles, and resets the shared selections before every forward (a pre-hook). On exit everything is put
back. Prefill stays dense; so does any forward of more than one token. `plan_decoding` (decoding/run.py) sets
up roles, formats and settings from a head plan at once.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..attention.hybrid import HybridAttention
from .attention import NAME, SLOT, register
from .config import DecodingError, SparseConfig
from .roles import resolve_roles
from .state import LayerSlot, SparseState


def attention_modules(model) -> list[tuple[int, object, list[int]]]:
    """(layer, module, KV-head index of each key head it attends with) for every attention call of `model`.

    A plain HF layer attends with all its KV heads in order; a hybrid layer's FA branch with its cached KV
    heads, or (when its FA heads are spread unevenly over KV groups) with one copy per FA query head.
    """
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise DecodingError(f"{type(model).__name__} has no decoder layers at .model.layers: sparse decoding supports "
                            "HF Qwen3 / Llama causal LMs and their hydrahead hybrids")
    found = []
    for i, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None)
        if isinstance(attn, HybridAttention):
            if attn.fa is None:
                continue  # an all-GDN layer keeps no KV cache: nothing to select from
            g = model.config.num_attention_heads // model.config.num_key_value_heads
            kv_ids = list(attn.fa_kv_heads) if attn.fa.uniform else [h // g for h in attn.fa_heads]
            found.append((i, attn.fa, kv_ids))
        elif attn is not None and hasattr(attn, "num_key_value_groups"):
            found.append((i, attn, list(range(model.config.num_key_value_heads))))
        else:
            raise DecodingError(f"layer {i}: {type(attn).__name__} is not an attention module sparse decoding knows")
    return found


@contextmanager
def sparse_decoding(model, roles=None, budget: float | str = 4096, config: SparseConfig | None = None, **options):
    """Sparse decoding on `model` inside the block; yields the `SparseState` (its `.stats` count KV bytes read).

    roles: a `HeadPlan` with decode roles, a plan file, a [layers][KV heads] list of "retrieval" / "sparse", or
    None for the roles of the model's own plan (a hybrid's; any other model is refused, naming `hydrahead
    roles`). budget and the keyword `options` (mode, sink, recent, block_size, dense_every, fallback, dense_share, score)
    make the `SparseConfig` unless `config` is given. Keys and values may come from a quantized cache.
    """
    config = config or SparseConfig(budget=budget, **options)
    table = resolve_roles(roles, model.config)
    modules = attention_modules(model)
    if any(getattr(m, SLOT, None) is not None for _, m, _ in modules):
        raise DecodingError("sparse decoding is already on for this model (nested sparse_decoding blocks)")
    register()
    state = SparseState(config)
    configs = {id(model.config): model.config}
    for layer, module, kv_ids in modules:
        setattr(module, SLOT, LayerSlot(state, layer, kv_ids, [table[layer][kv] == "retrieval" for kv in kv_ids]))
        configs[id(module.config)] = module.config
    previous = {key: c._attn_implementation for key, c in configs.items()}
    hook = model.register_forward_pre_hook(lambda *_: state.begin_forward())
    try:
        for c in configs.values():
            c._attn_implementation = NAME
        yield state
    finally:
        hook.remove()
        for key, c in configs.items():
            c._attn_implementation = previous[key]
        for _, module, _ in modules:
            if hasattr(module, SLOT):
                delattr(module, SLOT)
