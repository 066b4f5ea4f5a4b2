"""Head scores: per behaviour the receivers' activation-patching effects and the senders' path-patching
effects, the retrieval-score baseline, and their fusion into one global ranking.

Fusion is rank-based, because patching effects, path effects and retrieval scores live on different
scales: each map's absolute values are rank-normalised to [0, 1]; within a behaviour a head scores the
larger of its receiver rank and its sender rank (a head matters if it writes the answer or feeds the
heads that do); across behaviours the scores are averaged with configurable weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from ..jsonfile import read_json, write_json_atomic
from ..plan import ModelShape
from .behaviours import SelectionError

FORMAT = "hydrahead.scores/1"
# Effects are fractions of the behaviour's whole logit-difference gap. Below 1% a head carries nothing
# we can tell from numerical noise, and ranks among such heads would be arbitrary: they tie at zero.
NOISE_FLOOR = 0.01


def rank_normalise(values: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """|values| mapped to their average rank in [0, 1], same shape; |values| below `floor` tie at 0."""
    flat = np.abs(np.asarray(values, dtype=float)).ravel()
    flat[flat < floor] = 0.0
    if flat.size < 2:
        return np.zeros(np.shape(values))
    ranks = (rankdata(flat, method="average") - 1) / (flat.size - 1)
    ranks[flat == 0] = 0.0
    return ranks.reshape(np.shape(values))


def group_max(per_head: np.ndarray, shape: ModelShape) -> np.ndarray:
    """[L, H] -> [L, KV]: a KV group is as important as its most important query head."""
    return np.abs(per_head).reshape(shape.num_layers, shape.num_kv_heads, shape.group_size).max(-1)


@dataclass
class BehaviourScores:
    clean_ld: float
    corrupt_ld: float
    activation: np.ndarray  # [L, H] receiver effects
    activation_kv: np.ndarray  # [L, KV] effects of patching a whole KV group
    path: np.ndarray  # [L, H] sender effects through `receivers`
    receivers: list[tuple[int, int]]
    attribution: np.ndarray | None = None  # [L, H] first-order estimates, when computed

    def combined(self, shape: ModelShape, kv: bool = False) -> np.ndarray:
        f = NOISE_FLOOR
        if kv:
            return np.maximum(rank_normalise(self.activation_kv, f), rank_normalise(group_max(self.path, shape), f))
        return np.maximum(rank_normalise(self.activation, f), rank_normalise(self.path, f))


@dataclass
class Scores:
    model: str
    shape: ModelShape
    config: dict
    behaviours: dict[str, BehaviourScores]
    retrieval_score: np.ndarray | None = None  # [L, H]
    weights: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None

    def fused(self, weights: dict[str, float] | None = None, kv: bool = False) -> np.ndarray:
        """[L, H] (or [L, KV] with kv=True) global ranking scores in [0, 1]."""
        weights = weights if weights is not None else self.weights
        unknown = sorted(set(weights) - set(self.behaviours))
        if unknown:
            raise SelectionError(f"a weight names behaviour {unknown[0]!r}, which these scores do not have "
                                 f"(they have {', '.join(self.behaviours)})")
        w = {name: float(weights.get(name, 1.0)) for name in self.behaviours}
        if any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
            raise SelectionError(f"behaviour weights must be non-negative and not all zero, got {w}")
        total = sum(w[name] * b.combined(self.shape, kv) for name, b in self.behaviours.items())
        return total / sum(w.values())

    def ranking(self, weights: dict[str, float] | None = None) -> list[tuple[int, int]]:
        """Query heads (layer, head) from most to least important."""
        fused = self.fused(weights)
        order = np.argsort(-fused.ravel(), kind="stable")
        return [(int(i) // self.shape.num_heads, int(i) % self.shape.num_heads) for i in order]

    # ---- files ----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        def arr(x):
            return None if x is None else np.round(np.asarray(x, dtype=float), 6).tolist()

        return {
            "format": FORMAT,
            "model": self.model,
            "shape": vars(self.shape),
            "config": self.config,
            "weights": self.weights,
            "seconds": self.seconds,
            "fused": arr(self.fused()),
            "fused_kv": arr(self.fused(kv=True)),
            "retrieval_score": arr(self.retrieval_score),
            "behaviours": {
                name: {
                    "clean_logit_diff": round(b.clean_ld, 6),
                    "corrupt_logit_diff": round(b.corrupt_ld, 6),
                    "activation": arr(b.activation),
                    "activation_kv": arr(b.activation_kv),
                    "path": arr(b.path),
                    "receivers": [list(r) for r in b.receivers],
                    "attribution": arr(b.attribution),
                }
                for name, b in self.behaviours.items()
            },
        }

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Scores:
        data = read_json(path, "scores file", SelectionError)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SelectionError(f"{path} is not a hydrahead scores file (no \"format\": \"{FORMAT}\")")
        try:
            shape = ModelShape(**data["shape"])
            behaviours = {
                name: BehaviourScores(
                    b["clean_logit_diff"], b["corrupt_logit_diff"], np.array(b["activation"]),
                    np.array(b["activation_kv"]), np.array(b["path"]), [tuple(r) for r in b["receivers"]],
                    None if b.get("attribution") is None else np.array(b["attribution"]),
                )
                for name, b in data["behaviours"].items()
            }
            rs = data.get("retrieval_score")
            return cls(data.get("model", ""), shape, data.get("config", {}), behaviours,
                       None if rs is None else np.array(rs), data.get("weights") or {}, data.get("seconds"))
        except (KeyError, TypeError, ValueError) as e:
            raise SelectionError(f"{path}: a malformed scores file ({type(e).__name__}: {e})") from None


def parse_weights(spec: str | None) -> dict[str, float]:
    """'retrieval=2,induction=0.5' -> {'retrieval': 2.0, 'induction': 0.5}."""
    if not spec:
        return {}
    out = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise SelectionError(f"bad weight {item!r}: expected name=number, e.g. retrieval=2") from None
    return out
