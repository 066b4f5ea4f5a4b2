"""Decoding as a head plan says: per KV head its storage format (the cache) and its decode role, with the plan's
sparse-decoding settings, all at once.

    with plan_decoding(model, "runs/plan.json") as run:       # a HeadPlan, a file, or None: a hybrid's own plan
        out = model.generate(ids, max_new_tokens=32, **run.cache_kwargs(model))
    run.state.stats.read_fraction                              # with sparse decoding on

`greedy_generate(..., cache_factory=run)` and `evaluate(..., cache_factory=run)` take the run as their cache
factory. Keyword arguments override the plan (the command line's flags): `kv_format` every head's format,
`kv_window` / `kv_sink` / `kv_block` the sizes, `roles` the decode roles, `budget` ... `score` the sparse
settings, and `sparse` switches sparse decoding on or off (default: on when the plan has decode settings).
"""

from __future__ import annotations

import contextlib
import os
from contextlib import contextmanager
from dataclasses import dataclass

from ..plan import HeadPlan, PlanError
from .config import DecodingError, SparseConfig
from .roles import NO_ROLES, resolve_roles


@dataclass
class DecodeSetup:
    """A resolved decode: `plan` (None: the model's own cache, nothing changed) and `sparse` (None: dense)."""

    plan: HeadPlan | None
    sparse: SparseConfig | None

    def describe(self) -> dict:
        """{"kv_cache": the formats and sizes (None: the model's own cache), "sparse_decode": settings or None}."""
        plan, kv = self.plan, None
        if plan is not None and plan.kv_formats is not None:
            heads = {plan.head_kv(layer, h) for layer in range(plan.shape.num_layers) for h in plan.fa_kv_heads(layer)}
            if len(heads) == 1:
                one = next(iter(heads))
                kv = {"kv_format": one.spec, "window": one.window, "sink": one.sink, "block_size": one.block_size}
            else:
                kv = {"kv_format": "per head", "formats": sorted({h.spec for h in heads}),
                      "bytes_per_token": plan.kv_bytes_per_token()}
        return {"kv_cache": kv, "sparse_decode": None if self.sparse is None else self.sparse.to_dict()}


def decode_setup(config, plan: HeadPlan | str | os.PathLike | None = None, *, roles=None, sparse: bool | None = None,
                 kv_format: str | None = None, kv_window: int | None = None, kv_sink: int | None = None,
                 kv_block: int | None = None, budget: int | float | str | None = None, mode: str | None = None,
                 block_size: int | None = None, sink: int | None = None, recent: int | None = None,
                 dense_every: int | None = None, dense_share: float | None = None, score: str | None = None
                 ) -> DecodeSetup:
    """The plan and sparse settings a model of `config` decodes with: `plan` (default: a hybrid's own), then the
    overrides. A plan given for a hybrid may change roles, formats and decode settings, not its FA heads."""
    from ..configuration import hybrid_spec, is_hybrid

    own = hybrid_spec(config)[0] if is_hybrid(config) else None
    if isinstance(plan, (str, os.PathLike)):
        plan = HeadPlan.load(plan)
    if plan is not None:
        plan.check_model(config)
        if own is not None and plan.fa_heads != own.fa_heads:
            raise PlanError("the plan's FA heads differ from this hybrid's: a plan at decode time sets roles, KV formats "
                            "and decode settings; convert the model to change which heads run FA")
        if own is None and plan.num_gdn:
            raise PlanError(f"the plan turns {plan.num_gdn} heads into GDN heads: convert the model with it first "
                            "(`hydrahead convert --plan`); a plain model decodes with every head FA")
    base = plan if plan is not None else own
    sizes = {k: v for k, v in (("sink", kv_sink), ("window", kv_window), ("block_size", kv_block)) if v is not None}
    if kv_format is not None or sizes:
        if kv_format is None and (base is None or base.kv_formats is None):
            raise DecodingError("the KV window, sink and block sizes need KV formats: a KV format or a plan with kv_formats")
        base = base if base is not None else HeadPlan.full_attention(config)
        base = base.with_kv_formats(kv_format if kv_format is not None else base.kv_formats, **sizes)
    if roles is not None:
        base = (base if base is not None else HeadPlan.full_attention(config)).with_roles(resolve_roles(roles, config))
    settings = {k: v for k, v in (("budget", budget), ("mode", mode), ("block_size", block_size), ("sink", sink),
                                  ("recent", recent), ("dense_every", dense_every), ("dense_share", dense_share),
                                  ("score", score)) if v is not None}
    on = sparse if sparse is not None else base is not None and base.decode is not None
    if not on:
        if settings and sparse is None:
            raise DecodingError(f"{next(iter(settings))} only applies with sparse decoding (switch it on, or give a plan "
                                "with decode settings)")
        return DecodeSetup(base, None)
    if base is None or base.decode_roles is None:
        what = "this model has no head plan to take them from" if base is None else "the plan has none"
        raise DecodingError(NO_ROLES.format(what=what))
    return DecodeSetup(base, SparseConfig(**{**(base.decode or {}), **settings}))


@dataclass
class PlanRun:
    """What a `plan_decoding` block yields: the setup, the sparse decoding state (None when dense), and the cache
    factory (`run(model)`: a fresh cache in the plan's formats, or None for the model's own)."""

    setup: DecodeSetup
    state: object | None

    def __call__(self, model):
        if self.setup.plan is None:
            return None
        from ..kv.cache import plan_cache

        return plan_cache(model.config, self.setup.plan)

    def cache_kwargs(self, model) -> dict:
        """`model.generate(..., **run.cache_kwargs(model))`: the plan's cache under transformers' argument name."""
        from ..compat import cache_arg

        cache = self(model)
        return {} if cache is None else cache_arg(cache)

    def describe(self) -> dict:
        return self.setup.describe()


@contextmanager
def run_setup(model, setup: DecodeSetup):
    """Decode `model` as `setup` says inside the block (see `plan_decoding`)."""
    from ..kv.attention import blockwise_attention
    from .sparse import sparse_decoding

    quantized = setup.plan is not None and setup.plan.kv_formats is not None
    with contextlib.ExitStack() as stack:
        if quantized:
            stack.enter_context(blockwise_attention(model))
        state = stack.enter_context(sparse_decoding(model, setup.plan, config=setup.sparse)) if setup.sparse else None
        yield PlanRun(setup, state)


@contextmanager
def plan_decoding(model, plan: HeadPlan | str | os.PathLike | None = None, *, roles=None, sparse: bool | None = None,
                  kv_format: str | None = None, kv_window: int | None = None, kv_sink: int | None = None,
                  kv_block: int | None = None, budget: int | float | str | None = None, mode: str | None = None,
                  block_size: int | None = None, sink: int | None = None, recent: int | None = None,
                  dense_every: int | None = None, dense_share: float | None = None, score: str | None = None):
    """Decode `model` with `plan`'s KV formats, decode roles and settings inside the block (`decode_setup`)."""
    setup = decode_setup(model.config, plan, roles=roles, sparse=sparse, kv_format=kv_format, kv_window=kv_window,
                         kv_sink=kv_sink, kv_block=kv_block, budget=budget, mode=mode, block_size=block_size, sink=sink,
                         recent=recent, dense_every=dense_every, dense_share=dense_share, score=score)
    with run_setup(model, setup) as run:
        yield run
