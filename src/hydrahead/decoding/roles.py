"""Decode roles per (layer, KV head): from learned gate values, from head-selection scores, at random, or by
a uniform rule; and the resolution of whatever a user passes as roles into a checked [layers][KV] table.

Layer 0 is always retrieval (there is nothing below it to reuse). The `target` is the share of the other
KV heads (layers 1..L-1) that are retrieval heads: the heads whose role is free, which the gates learn.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..plan import DECODE_ROLES, HeadPlan, ModelShape, PlanError
from .config import DecodingError

RETRIEVAL, SPARSE = DECODE_ROLES


def retrieval_count(shape: ModelShape, target: float) -> int:
    """How many of the free KV heads are retrieval at share `target` (at least one when target > 0)."""
    if not 0 <= target <= 1:
        raise PlanError(f"the retrieval share must lie in [0, 1], got {target}")
    free = (shape.num_layers - 1) * shape.num_kv_heads
    return 0 if target == 0 else min(free, max(1, math.floor(target * free + 0.5)))


def roles_from_values(values, shape: ModelShape, target: float | None = 0.1, threshold: float = 0.5) -> list[list[str]]:
    """Roles from one value per (layer, KV head) [L, KV], higher meaning "needs its own attention".

    With a target, the top `retrieval_count(target)` free heads (ties: lower layer first); without one, the
    heads whose value exceeds `threshold`. Layer 0 is retrieval either way.
    """
    values = np.asarray(values, dtype=float)
    if values.shape != (shape.num_layers, shape.num_kv_heads):
        raise PlanError(f"role values have shape {values.shape}; the model has {shape.num_layers} layers x "
                        f"{shape.num_kv_heads} KV heads")
    free = values[1:].ravel()
    if target is None:
        chosen = set(np.flatnonzero(free > threshold).tolist())
    else:
        chosen = set(np.argsort(-free, kind="stable")[: retrieval_count(shape, target)].tolist())
    kv = shape.num_kv_heads
    return [[RETRIEVAL] * kv] + [[RETRIEVAL if (layer - 1) * kv + h in chosen else SPARSE for h in range(kv)]
                                 for layer in range(1, shape.num_layers)]


def roles_from_scores(scores, target: float = 0.1) -> list[list[str]]:
    """The top KV heads by head-selection scores (`Scores.fused(kv=True)`, [L, KV])."""
    return roles_from_values(scores.fused(kv=True), scores.shape, target)


def random_roles(shape: ModelShape, target: float = 0.1, seed: int = 0) -> list[list[str]]:
    """As many retrieval heads as `target` asks for, drawn at random (the baseline learned roles must beat)."""
    return roles_from_values(np.random.default_rng(seed).random((shape.num_layers, shape.num_kv_heads)), shape, target)


def uniform_roles(shape: ModelShape) -> list[list[str]]:
    """A baseline (`hydrahead roles --method uniform`), never a default: every KV head of layer 0 and of the middle
    layer is retrieval, the rest reuse (TidalDecode's observation that one re-selection layer halfway up keeps
    most of the recall; on the teacher it scores 0.5 where dense scores 96.5)."""
    middle = shape.num_layers // 2
    return [[RETRIEVAL if layer in (0, middle) else SPARSE] * shape.num_kv_heads for layer in range(shape.num_layers)]


def role_plan(config_or_shape, roles, **meta) -> HeadPlan:
    """A plan that carries only decode roles: every head FA (the plain model) plus `roles`."""
    return HeadPlan.full_attention(config_or_shape).with_roles(roles, **meta)


NO_ROLES = ("sparse decoding needs decode roles (retrieval / sparse per KV head) and {what}: learn them in seconds "
            "with `hydrahead roles --model DIR --out roles.json` and pass that plan (--plan or --roles)")


def model_roles(config) -> list[list[str]]:
    """The decode roles of a model's own plan (a hydrahead hybrid's); an error naming `hydrahead roles` if none."""
    spec = getattr(config, "hydrahead", None)
    if not spec:
        raise DecodingError(NO_ROLES.format(what="this model has no head plan to take them from"))
    roles = HeadPlan.from_dict(spec["plan"], "config.hydrahead").decode_roles
    if roles is None:
        raise DecodingError(NO_ROLES.format(what="this hybrid's plan has none"))
    return roles


def resolve_roles(roles, config) -> list[list[str]]:
    """A checked [layers][KV heads] role table for a model of `config` from: None (the roles of the model's own
    plan; an error naming `hydrahead roles` without), a plan with decode roles, the path of one, or a table."""
    shape = ModelShape.of(config)
    if roles is None:
        return model_roles(config)
    if isinstance(roles, (str, os.PathLike)):
        roles = HeadPlan.load(roles)
    if isinstance(roles, HeadPlan):
        roles.check_model(config)
        if roles.decode_roles is None:
            raise PlanError("the plan has no decode roles; make one with `hydrahead roles` or HeadPlan.with_roles(...)")
        return roles.decode_roles
    return role_plan(shape, roles).decode_roles
