"""A head plan under a KV budget that chooses FA heads, KV formats and decode roles together
(`hydrahead plan --kv_budget BYTES --kv_formats bf16,fp8,int4,tq4:int4 --model DIR`).

Every candidate format's error is measured per KV head on the model's own keys and values: the relative MSE
of the keys plus that of the values, quantized as the cache quantizes them (blocks of `block_size` tokens),
over offline NIAH prompts. A head's cost in a format is the exact bytes of one of its blocks / block_size.
Then:
1. each KV head's base format is the cheapest candidate whose error on it is at most `max_error` (none: the
   most accurate candidate);
2. units (query heads, or whole KV groups at kv granularity) in the order of their fused causal score become
   FA while their KV head, in its base format, fits the budget (a query head whose KV head is already cached
   costs nothing more);
3. the budget left upgrades the cached KV heads, best scored first, to the most accurate candidate that fits;
4. decode roles: every KV head of layer 0 and the best-scored `roles_target` share of the others are retrieval.
The plan's exact bytes per token (`HeadPlan.kv_bytes_per_token`) never exceed the budget: a group of heads in
one format shares its per-block scalars, so it costs at most the sum of its heads' costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..plan import HeadPlan, ModelShape
from .behaviours import SelectionError
from .scores import Scores

DEFAULT_FORMATS = ("bf16", "fp8", "int4", "tq4:int4", "mxfp4", "nvfp4")


@dataclass
class FormatErrors:
    """errors[layer, kv_head, i]: relative MSE of keys plus that of values of format `specs[i]` on that head."""

    specs: list[str]
    errors: np.ndarray  # [L, KV, F]
    block_size: int = 64


def head_cost(spec: str, head_dim: int, block_size: int = 64) -> float:
    """Bytes per token of one KV head stored alone in `spec` (keys and values, every scale)."""
    from ..kv.spec import parse_cache_spec

    shape = (1, 1, block_size, head_dim)
    keys, values = parse_cache_spec(spec)
    return (keys.build(head_dim).stored_nbytes(shape) + values.build(head_dim).stored_nbytes(shape)) / block_size


def measure_format_errors(model, tokenizer, specs, samples: int = 4, length: int | None = None, seed: int = 0,
                          block_size: int = 64) -> FormatErrors:
    """Each format's error on every KV head of `model`, from the keys and values its own cache holds after
    prefilling `samples` offline niah_single_1 prompts of `length` tokens (default: the native length)."""
    import torch

    from ..compat import output_cache
    from ..kv.metrics import fake_quantize, relative_mse
    from ..kv.spec import parse_cache_spec
    from ..tasks import generate

    shape = ModelShape.of(model.config)
    length = length or int(getattr(model.config, "max_position_embeddings", 512))
    formats = [tuple(side.build(shape.head_dim) for side in parse_cache_spec(spec)) for spec in specs]
    keys = [[] for _ in range(shape.num_layers)]
    values = [[] for _ in range(shape.num_layers)]
    with torch.no_grad():
        for sample in generate("niah_single_1", tokenizer, length, samples, seed=seed):
            ids = torch.tensor([tokenizer(sample.prompt(), add_special_tokens=False)["input_ids"]])
            cache = output_cache(model(input_ids=ids, use_cache=True))
            for layer in range(shape.num_layers):
                keys[layer].append(cache.layers[layer].keys[0])  # [KV, T, D], as the cache stores them
                values[layer].append(cache.layers[layer].values[0])
    errors = np.zeros((shape.num_layers, shape.num_kv_heads, len(specs)))
    for layer in range(shape.num_layers):
        k, v = torch.cat(keys[layer], dim=1).float(), torch.cat(values[layer], dim=1).float()
        for kv in range(shape.num_kv_heads):
            for i, (kf, vf) in enumerate(formats):
                errors[layer, kv, i] = (relative_mse(k[kv], fake_quantize(k[kv], kf, block_size))
                                        + relative_mse(v[kv], fake_quantize(v[kv], vf, block_size)))
    return FormatErrors(list(specs), errors, block_size)


def plan_under_budget(shape: ModelShape, scores: Scores, errors: FormatErrors, kv_budget: float,
                      granularity: str = "kv", max_error: float = 0.02, roles_target: float = 0.1,
                      decode: dict | None = None) -> HeadPlan:
    """FA heads, per-KV-head formats and decode roles under `kv_budget` bytes per token (see the module)."""
    from ..decoding.roles import roles_from_values

    if scores.shape != shape or errors.errors.shape[:2] != (shape.num_layers, shape.num_kv_heads):
        raise SelectionError(f"the scores and format errors must be for a model with {shape.describe()}")
    kv = granularity == "kv"
    cost = np.array([head_cost(spec, shape.head_dim, errors.block_size) for spec in errors.specs])  # [F]
    cheapest = np.argsort(cost, kind="stable")
    if kv_budget < cost.min():
        raise SelectionError(f"a KV budget of {kv_budget:g} bytes per token is smaller than one KV head in the cheapest "
                             f"format ({errors.specs[int(cheapest[0])]}: {cost.min():g} bytes per token)")
    base = np.empty((shape.num_layers, shape.num_kv_heads), dtype=int)
    for layer in range(shape.num_layers):
        for h in range(shape.num_kv_heads):
            ok = [f for f in cheapest if errors.errors[layer, h, f] <= max_error]
            base[layer, h] = ok[0] if ok else int(np.argmin(errors.errors[layer, h]))
    unit_scores = scores.fused(kv=kv)  # [L, units]
    per_row = unit_scores.shape[1]
    chosen: dict[tuple[int, int], int] = {}  # cached (layer, kv head) -> format index
    fa_heads: list[list[int]] = [[] for _ in range(shape.num_layers)]
    spent = 0.0
    for i in np.argsort(-unit_scores.ravel(), kind="stable"):
        layer, unit = divmod(int(i), per_row)
        head = (layer, unit if kv else unit // shape.group_size)
        extra = 0.0 if head in chosen else cost[base[head]]
        if spent + extra > kv_budget:
            continue
        chosen.setdefault(head, int(base[head]))
        fa_heads[layer] += list(range(unit * shape.group_size, (unit + 1) * shape.group_size)) if kv else [unit]
        spent += extra
    kv_scores = scores.fused(kv=True)
    for head in sorted(chosen, key=lambda h: -kv_scores[h]):  # upgrades, best scored first
        fits = [f for f in range(len(cost)) if spent - cost[chosen[head]] + cost[f] <= kv_budget]
        best = min(fits, key=lambda f: (errors.errors[head][f], cost[f]))
        spent += cost[best] - cost[chosen[head]]
        chosen[head] = best
    formats = [[errors.specs[chosen.get((layer, h), int(base[layer, h]))] for h in range(shape.num_kv_heads)]
               for layer in range(shape.num_layers)]
    # uncached heads play no part at decode: only the cached ones compete for the retrieval role
    values = np.where([[(layer, h) in chosen for h in range(shape.num_kv_heads)] for layer in range(shape.num_layers)],
                      kv_scores, -1.0)
    meta = {"strategy": "kv_budget", "kv_budget": kv_budget, "kv_formats_tried": list(errors.specs),
            "max_error": max_error, "roles_target": roles_target}
    plan = HeadPlan(shape, fa_heads, granularity, meta).with_kv_formats(formats, block_size=errors.block_size)
    plan = plan.with_roles(roles_from_values(values, shape, roles_target))
    return plan.with_decode(**decode) if decode else plan
