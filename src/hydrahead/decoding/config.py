"""The settings of sparse decoding: the token budget (a count or a share of the context), token or block
selection, the sink and recent tokens every selection keeps, and the optional dense correction step."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import HydraheadError

MODES = ("token", "block")
# how a retrieval head ranks tokens: the softmax attention of its query heads, summed over the GQA group; or as
# LycheeDecode's released code does, the group's mean query dotted with each key (raw logits, unscaled)
SCORES = ("attention", "authors")


class DecodingError(HydraheadError):
    pass


def parse_budget(value) -> int | float:
    """'4096' -> 4096 tokens; '0.1' -> a tenth of the context. Ints stay counts, floats in (0, 1] are ratios."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise DecodingError(f"budget must be a token count (4096) or a share of the context (0.1), got {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecodingError(f"budget must be a token count or a share of the context, got {value!r}")
    if isinstance(value, float) and value.is_integer() and value > 1:
        value = int(value)
    if isinstance(value, int):
        if value < 1:
            raise DecodingError(f"a budget of {value} tokens: it must be at least 1")
        return value
    if not 0 < value <= 1 or math.isnan(value):
        raise DecodingError(f"a budget given as a share of the context must lie in (0, 1], got {value}")
    return value


@dataclass(frozen=True)
class SparseConfig:
    """budget: tokens a sparse head attends to per step (int), or that share of the context (float).
    It includes the `sink` first and `recent` last tokens, which every selection keeps.
    mode: "token" (top-k tokens) or "block" (top blocks of `block_size` tokens, cheaper to gather on GPUs).
    dense_every: every N-th decode step runs dense in every head (a cache correction), None for never.
    fallback: attend densely when the budget covers `dense_share` of the context or more (off only to test the
    sparse path).
    dense_share: the share of the context from which a budget runs dense (default 0.4). Sparse steps stop paying
    where sparse heads read about 3/8 of the keys: Qwen3-0.6B shape, 8 layers, 8K tokens, float32, against the
    dense decode attention, both on the native kernels (benchmarks/sparse_decode.py, quiet): budget 2,048 1.07x,
    3,072 1.00x, 4,096 0.95x; at 32K a budget of 4,096 is 1.45x, at 131K 2.20x. 1.0 runs sparse up to a budget
    that covers every key.
    score: how retrieval heads rank tokens, "attention" (softmax mass summed over the GQA group) or "authors"
    (the group's mean query . each key, no 1/sqrt(d), no softmax, the current token included).
    """

    budget: int | float = 4096
    mode: str = "token"
    block_size: int = 64
    sink: int = 4
    recent: int = 32
    dense_every: int | None = None
    fallback: bool = True
    dense_share: float = 0.4
    score: str = "attention"

    def __post_init__(self):
        object.__setattr__(self, "budget", parse_budget(self.budget))
        if self.mode not in MODES:
            raise DecodingError(f"selection mode must be one of {MODES}, not {self.mode!r}")
        if self.score not in SCORES:
            raise DecodingError(f"selection score must be one of {SCORES}, not {self.score!r}")
        if self.block_size < 1 or self.sink < 0 or self.recent < 0:
            raise DecodingError(f"block_size must be >= 1 and sink, recent >= 0 (got {self.block_size}, {self.sink}, {self.recent})")
        if not 0 < self.dense_share <= 1:
            raise DecodingError(f"dense_share must be in (0, 1], got {self.dense_share}")
        if self.dense_every is not None and self.dense_every < 1:
            raise DecodingError(f"dense_every must be a positive number of steps, got {self.dense_every}")
        if isinstance(self.budget, int) and self.budget < self.sink + self.recent:
            raise DecodingError(f"a budget of {self.budget} tokens cannot hold the {self.sink} sink and {self.recent} "
                                f"recent tokens every selection keeps; give at least {self.sink + self.recent}")

    def tokens(self, context: int) -> int:
        """The number of tokens to select from a context of `context` keys (never fewer than sink + recent)."""
        k = self.budget if isinstance(self.budget, int) else math.ceil(self.budget * context)
        return max(k, self.sink + self.recent, 1)

    def to_dict(self) -> dict:
        return asdict(self)
