"""Intervals and verdicts from per-sample scores.

A score table's cell is a mean over samples, often over several cells of samples at once (tasks x lengths);
its 95% interval is a percentile bootstrap over the samples, resampled within each cell so that every cell
keeps its weight. Two variants evaluated on the same samples (same tasks, lengths, evaluation seed) are
compared by a paired bootstrap: the per-sample differences are resampled, which removes the samples' own
difficulty from the noise. A claim is then decided from the difference's interval:

- "beats" (A > B): confirmed if the whole interval is above 0, refuted if it is below 0, else undecided;
- "matches" (A is not worse than B by more than `margin` points): confirmed if the whole interval is at or
  above -margin, refuted if it is below -margin, else undecided. A claim such as "head-wise 7:1 matches
  layer-wise 3:1 on retrieval" says the cheaper design loses nothing; A clearly better does not refute it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import HydraheadError

RESAMPLES = 2000
RULES = ("beats", "matches")
VERDICTS = ("confirmed", "refuted", "undecided")


def bootstrap(values: list[float], rng: random.Random, n: int = RESAMPLES) -> tuple[float, float]:
    """95% percentile interval of the mean of `values` (scores 0-100)."""
    if len(set(values)) <= 1:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def stratified_bootstrap(groups: list[list[float]], rng: random.Random, n: int = RESAMPLES) -> tuple[float, float]:
    """95% interval of the mean over groups of the group means, each group resampled on its own."""
    means = sorted(sum(sum(rng.choices(g, k=len(g))) / len(g) for g in groups) / len(groups) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def mean_of_groups(groups: list[list[float]]) -> float:
    return sum(sum(g) / len(g) for g in groups) / len(groups)


def decide(lo: float, hi: float, rule: str, margin: float = 0.0) -> str:
    """The verdict on "A beats B" or "A matches B" from the 95% interval [lo, hi] of mean(A) - mean(B)."""
    if rule == "beats":
        return "confirmed" if lo > 0 else "refuted" if hi < 0 else "undecided"
    if rule == "matches":
        if margin <= 0:
            raise HydraheadError(f"'matches' needs a positive margin (points), got {margin}")
        return "confirmed" if lo >= -margin else "refuted" if hi < -margin else "undecided"
    raise HydraheadError(f"unknown rule {rule!r}; rules: {', '.join(RULES)}")


@dataclass(frozen=True)
class Comparison:
    """mean(A), mean(B), their difference and its 95% paired bootstrap interval, and the verdict."""

    a: float
    b: float
    diff: float
    lo: float
    hi: float
    rule: str
    margin: float
    verdict: str


def paired_comparison(a: list[list[float]], b: list[list[float]], rule: str, margin: float = 0.0,
                      rng: random.Random | None = None, n: int = RESAMPLES) -> Comparison:
    """A against B on the same samples: `a` and `b` are per-sample scores in cells (say one per task and
    length), sample i of a cell in A being sample i of that cell in B. The differences are bootstrapped
    within each cell (stratified), so the interval is that of mean over cells of the cell means."""
    if not a or len(a) != len(b) or any(len(x) != len(y) or not x for x, y in zip(a, b)):
        raise HydraheadError(
            f"a paired comparison needs the same non-empty cells of samples on both sides; got cell sizes "
            f"{[len(x) for x in a]} and {[len(y) for y in b]}")
    decide(0.0, 0.0, rule, margin)  # a bad rule or margin fails before the resampling
    diffs = [[x - y for x, y in zip(ca, cb)] for ca, cb in zip(a, b)]
    lo, hi = stratified_bootstrap(diffs, rng or random.Random(0), n)
    return Comparison(mean_of_groups(a), mean_of_groups(b), mean_of_groups(diffs), lo, hi, rule, margin,
                      decide(lo, hi, rule, margin))


def combine(verdicts: list[str]) -> str:
    """One claim decided by several comparisons that must all hold: refuted if any is, confirmed if all are."""
    if not verdicts:
        return "undecided"
    if "refuted" in verdicts:
        return "refuted"
    return "confirmed" if all(v == "confirmed" for v in verdicts) else "undecided"
