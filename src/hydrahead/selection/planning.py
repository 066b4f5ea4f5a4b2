"""From scores to a head plan: which heads keep FA, under a ratio, a granularity and a KV budget.

Strategies:
- interp: the top units by the fused causal-intervention score (HydraHead);
- interp_lowest: the bottom units by the same score, under the same per-layer / global rule (the sharpest
  test of whether the ranking matters: the heads interp would keep last);
- retrieval_score: the top units by Wu et al.'s retrieval score (a baseline);
- layerwise: whole layers FA, evenly spaced, the last layer of every block (as in 3:1 hybrids);
- random: seeded random units (a baseline).

A unit is a query head at `query` granularity and a KV group at `kv` granularity. The ratio is
GDN:FA over units, e.g. 7:1 keeps one unit in eight as FA. A KV budget (bytes per token for the whole
model's cache, at `dtype`) is filled greedily in score order; at query granularity a head whose KV group
is already cached costs nothing more.
"""

from __future__ import annotations

import random
from fractions import Fraction

import numpy as np

from ..plan import HeadPlan, ModelShape, PlanError, dtype_bytes
from .behaviours import SelectionError
from .scores import Scores, group_max

STRATEGIES = ("interp", "interp_lowest", "retrieval_score", "layerwise", "random")


def parse_ratio(text: str) -> Fraction:
    """'7:1' (GDN:FA) -> the share of FA units, 1/8."""
    try:
        gdn, fa = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise SelectionError(f"bad ratio {text!r}: expected GDN:FA as two whole numbers, e.g. 7:1") from None
    if gdn < 0 or fa < 0 or gdn + fa == 0:
        raise SelectionError(f"bad ratio {text!r}: both sides must be non-negative and not both zero")
    return Fraction(fa, gdn + fa)


def possible_ratios(units: int) -> str:
    """The r:1 ratios that `units` units can meet exactly."""
    return ", ".join(f"{units // k - 1}:1" for k in range(units, 0, -1) if units % k == 0 and k < units) or "none"


def _count(share: Fraction, units: int, ratio: str, what: str) -> int:
    n = share * units
    if n.denominator != 1:
        raise SelectionError(
            f"ratio {ratio} cannot be met: {what} has {units} units, and {units} x {share} = {float(n):.3g} is not a "
            f"whole number of FA units; ratios it can meet: {possible_ratios(units)}"
        )
    return int(n)


def _unit_scores(strategy: str, scores: Scores | None, shape: ModelShape, kv: bool, seed: int) -> np.ndarray:
    """[L, units per layer], higher = keep FA first."""
    rows = shape.num_kv_heads if kv else shape.num_heads
    if strategy == "random":
        return np.random.default_rng(seed).random((shape.num_layers, rows))
    if scores is None:
        raise SelectionError(f"strategy {strategy!r} needs a scores file (from `hydrahead score`)")
    if scores.shape != shape:
        raise SelectionError(f"the scores are for a model with {scores.shape.describe()}, not {shape.describe()}")
    if strategy == "interp":
        return scores.fused(kv=kv)
    if strategy == "interp_lowest":
        return scores.fused(kv=kv)  # the same scores; `_order` walks them from the other end
    if scores.retrieval_score is None:
        raise SelectionError("these scores have no retrieval score (the sweep ran with --retrieval_samples 0)")
    return group_max(scores.retrieval_score, shape) if kv else np.asarray(scores.retrieval_score)


def _order(values: np.ndarray, strategy: str) -> np.ndarray:
    """Indices of `values` (1-D) in the order units are kept FA: highest first, ties by index (a stable sort);
    for interp_lowest exactly the reverse, so it keeps the units interp's ranking lists last, ties included
    (heads under the noise floor all score 0, and many may tie)."""
    order = np.argsort(-values, kind="stable")
    return order[::-1] if strategy == "interp_lowest" else order


def _kv_cost(shape: ModelShape, dtype) -> int:
    return 2 * shape.head_dim * dtype_bytes(dtype)  # K and V of one KV head, one token


def make_plan(shape: ModelShape, strategy: str = "interp", ratio: str | None = "7:1", granularity: str = "query",
              kv_budget: int | None = None, dtype="bfloat16", scores: Scores | None = None, per_layer: bool = False,
              seed: int = 0) -> HeadPlan:
    if strategy not in STRATEGIES:
        raise SelectionError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if granularity not in ("query", "kv"):
        raise SelectionError(f"granularity must be 'query' or 'kv', not {granularity!r}")
    if ratio is None and kv_budget is None:
        raise SelectionError("give a ratio (e.g. 7:1), a KV budget in bytes per token, or both")
    cost = _kv_cost(shape, dtype)
    if kv_budget is not None and kv_budget < cost:
        raise SelectionError(
            f"a KV budget of {kv_budget} bytes per token is smaller than one KV head: {cost} bytes per token "
            f"(K and V, head_dim {shape.head_dim}, {dtype})"
        )
    meta = {"strategy": strategy, "ratio": ratio, "kv_budget": kv_budget, "dtype": str(dtype), "seed": seed,
            "per_layer": per_layer}
    if strategy == "layerwise":
        return _layerwise(shape, ratio, kv_budget, cost, meta)

    kv = granularity == "kv"
    per_row = shape.num_kv_heads if kv else shape.num_heads
    unit_scores = _unit_scores(strategy, scores, shape, kv, seed)
    share = parse_ratio(ratio) if ratio is not None else None
    if per_layer:
        if share is None:
            raise SelectionError("--per_layer needs a ratio")
        n_layer = _count(share, per_row, ratio, f"each layer at {granularity} granularity")
        order = [(layer, u) for layer in range(shape.num_layers)
                 for u in _order(unit_scores[layer], strategy)[:n_layer]]
        wanted = len(order)
    else:
        flat = _order(unit_scores.ravel(), strategy)
        order = [(int(i) // per_row, int(i) % per_row) for i in flat]
        total = shape.num_layers * per_row
        wanted = _count(share, total, ratio, f"the model at {granularity} granularity") if share is not None else total

    chosen: list[tuple[int, int]] = []
    cached: set[tuple[int, int]] = set()  # (layer, kv head) already paid for
    spent = 0
    for layer, u in order:
        if len(chosen) == wanted:
            break
        kv_head = u if kv else u // shape.group_size
        extra = 0 if (layer, kv_head) in cached else cost
        if kv_budget is not None and spent + extra > kv_budget:
            continue
        chosen.append((layer, int(u)))
        cached.add((layer, kv_head))
        spent += extra
    if share is not None and len(chosen) < wanted:
        raise SelectionError(
            f"a KV budget of {kv_budget} bytes per token holds only {len(chosen)} of the {wanted} FA units that ratio "
            f"{ratio} asks for at {granularity} granularity; raise the budget or give no ratio"
        )
    fa_heads: list[list[int]] = [[] for _ in range(shape.num_layers)]
    for layer, u in chosen:
        fa_heads[layer] += shape_group(shape, u) if kv else [u]
    try:
        return HeadPlan(shape, fa_heads, granularity, meta)
    except PlanError as e:
        raise SelectionError(str(e)) from None


def equal_kv_plan(reference: HeadPlan, strategy: str = "interp", scores: Scores | None = None,
                  dtype="bfloat16", seed: int = 0) -> HeadPlan:
    """A head-wise plan at KV granularity that caches as many KV heads as `reference` (e.g. a layer-wise 3:1
    plan), so both cost the same KV bytes per token; `strategy` picks the KV groups. This is the comparison at
    equal memory, beside the one at equal ratio."""
    shape = reference.shape
    units = reference.num_cached_kv
    total = shape.num_layers * shape.num_kv_heads
    if units == 0:
        raise SelectionError("the reference plan caches no KV head: there is no KV budget to match")
    plan = make_plan(shape, strategy, f"{total - units}:{units}", "kv", kv_budget=units * _kv_cost(shape, dtype),
                     dtype=dtype, scores=scores, seed=seed)
    plan.meta["equal_kv_to"] = reference.meta.get("strategy", "plan")
    return plan


def shape_group(shape: ModelShape, kv_head: int) -> list[int]:
    g = shape.group_size
    return list(range(kv_head * g, (kv_head + 1) * g))


def _layerwise(shape: ModelShape, ratio: str | None, kv_budget: int | None, cost: int, meta: dict) -> HeadPlan:
    if ratio is None:
        raise SelectionError("the layerwise strategy needs a ratio, e.g. 3:1")
    n = _count(parse_ratio(ratio), shape.num_layers, ratio, "a layer-wise plan")
    # FA at the last layer of each block of L/n layers: 3:1 on 8 layers gives layers 3 and 7
    layers = [round((i + 1) * shape.num_layers / n) - 1 for i in range(n)]
    need = n * shape.num_kv_heads * cost
    if kv_budget is not None and need > kv_budget:
        raise SelectionError(f"a layer-wise {ratio} plan needs {need} bytes per token of KV; the budget is {kv_budget}")
    heads = [list(range(shape.num_heads)) if layer in layers else [] for layer in range(shape.num_layers)]
    return HeadPlan(shape, heads, "kv", meta)


def random_heads(shape: ModelShape, k: int, seed: int) -> list[tuple[int, int]]:
    """k distinct query heads drawn with a fixed seed (the random-ablation baseline)."""
    pool = [(layer, h) for layer in range(shape.num_layers) for h in range(shape.num_heads)]
    return random.Random(seed).sample(pool, k)
