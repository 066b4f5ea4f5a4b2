"""Head selection by causal intervention: behaviours (clean / corrupted pairs), activation, attribution
and path patching of attention heads, the retrieval-score baseline, fused rankings, and plans."""

from .ablation import AblationCurve, ablation_curve, head_means, mean_ablated
from .behaviours import BEHAVIOURS, Behaviour, Pair, PairBatch, SelectionError, get_behaviours
from .heads import HeadSite
from .path import path_patching
from .patching import Runs, activation_patching, attribution_patching, group_units, head_units, prepare_runs
from .planning import STRATEGIES, make_plan, parse_ratio
from .retrieval_score import retrieval_scores
from .scores import BehaviourScores, Scores, rank_normalise
from .sweep import ScoreConfig, partial_path, score_heads

__all__ = [
    "AblationCurve", "ablation_curve", "head_means", "mean_ablated",
    "BEHAVIOURS", "Behaviour", "Pair", "PairBatch", "SelectionError", "get_behaviours",
    "HeadSite", "path_patching", "Runs", "activation_patching", "attribution_patching", "group_units",
    "head_units", "prepare_runs", "STRATEGIES", "make_plan", "parse_ratio", "retrieval_scores",
    "BehaviourScores", "Scores", "rank_normalise", "ScoreConfig", "partial_path", "score_heads",
]
