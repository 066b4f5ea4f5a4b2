"""Head selection by causal intervention: behaviours (clean / corrupted pairs), activation, attribution
and path patching of attention heads, the retrieval-score baseline, fused rankings, and plans."""

from .ablation import AblationCurve, ablation_curve, head_means, mean_ablated
from .behaviours import (
    BEHAVIOURS,
    Behaviour,
    Pair,
    PairBatch,
    SelectionError,
    get_behaviours,
)
from .heads import HeadSite
from .patching import (
    Runs,
    activation_patching,
    attribution_patching,
    group_units,
    head_units,
    prepare_runs,
)
from .path import path_patching
from .planning import STRATEGIES, equal_kv_plan, make_plan, parse_ratio
from .retrieval_score import retrieval_scores
from .scores import BehaviourScores, Scores, rank_normalise
from .sweep import ScoreConfig, partial_path, score_heads

__all__ = [
    "BEHAVIOURS",
    "STRATEGIES",
    "AblationCurve",
    "Behaviour",
    "BehaviourScores",
    "HeadSite",
    "Pair",
    "PairBatch",
    "Runs",
    "ScoreConfig",
    "Scores",
    "SelectionError",
    "ablation_curve",
    "activation_patching",
    "attribution_patching",
    "equal_kv_plan",
    "get_behaviours",
    "group_units",
    "head_means",
    "head_units",
    "make_plan",
    "mean_ablated",
    "parse_ratio",
    "partial_path",
    "path_patching",
    "prepare_runs",
    "rank_normalise",
    "retrieval_scores",
    "score_heads",
]
