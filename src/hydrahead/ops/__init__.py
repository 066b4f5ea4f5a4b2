"""Sequence-mixing ops: the gated delta rule in plain PyTorch, with fla on CUDA when it is installed."""

from .gated_delta import (
    chunk_gated_delta_rule,
    gated_delta_rule,
    l2norm,
    recurrent_gated_delta_rule,
)

__all__ = ["chunk_gated_delta_rule", "gated_delta_rule", "l2norm", "recurrent_gated_delta_rule"]
