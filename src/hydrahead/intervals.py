"""Intervals and verdicts from per-sample scores.

A score table's cell is a mean over samples, often over several cells of samples at once (tasks x lengths);
its 95% interval is a percentile bootstrap over the samples, resampled within each cell so that every cell
keeps its weight. Two variants evaluated on the same samples (same tasks, lengths, evaluation seed) are
compared by a paired bootstrap: the per-sample differences are resampled, which removes the samples' own
difficulty from the noise. Where a side is a group of runs that differ by more than their samples do (random
plans: one may hold the retrieval heads and the next none), the interval must also cover which runs were drawn:
`paired_comparison_over_runs` resamples the runs of each side, then the samples. A claim is then decided
from the difference's interval:

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


def average_runs(runs: list[list[list[float]]]) -> list[list[float]]:
    """Several runs' cells of per-sample scores (the same samples in each) as one: each sample averaged over the
    runs, cell by cell."""
    return [[sum(xs) / len(xs) for xs in zip(*per_run)] for per_run in zip(*runs)]


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


def paired_comparison_over_runs(a: list[list[list[float]]], b: list[list[list[float]]], rule: str,
                                margin: float = 0.0, rng: random.Random | None = None,
                                n: int = RESAMPLES) -> Comparison:
    """A against B where each side is several runs (training seeds, random plans) on the same samples: `a[r]`
    is run r's cells of per-sample scores. Two-level bootstrap: each resample draws the runs of each side with
    replacement, then each cell's samples with replacement (the same samples for every run, so it stays paired),
    and takes mean over cells of (A's drawn runs' mean - B's drawn runs' mean). With few runs the percentile
    interval over them is itself rough (4 runs give 35 distinct draws), but it is no longer an interval that
    assumes the runs drawn are the only ones there could be."""
    runs = a + b
    if not a or not b or any(len(r) != len(runs[0]) for r in runs) or any(
            len(x) != len(y) or not x for r in runs for x, y in zip(r, runs[0])):
        raise HydraheadError(
            f"a comparison over runs needs runs on both sides with the same non-empty cells of samples; got "
            f"{len(a)} and {len(b)} runs with cell sizes {[[len(c) for c in r] for r in runs]}")
    decide(0.0, 0.0, rule, margin)
    rng = rng or random.Random(0)
    means = []
    for _ in range(n):
        drawn_a, drawn_b = average_runs(rng.choices(a, k=len(a))), average_runs(rng.choices(b, k=len(b)))
        diffs = [[x - y for x, y in zip(ca, cb)] for ca, cb in zip(drawn_a, drawn_b)]
        means.append(sum(sum(rng.choices(d, k=len(d))) / len(d) for d in diffs) / len(diffs))
    means.sort()
    lo, hi = means[int(0.025 * n)], means[int(0.975 * n) - 1]
    mean_a, mean_b = mean_of_groups(average_runs(a)), mean_of_groups(average_runs(b))
    return Comparison(mean_a, mean_b, mean_a - mean_b, lo, hi, rule, margin, decide(lo, hi, rule, margin))


def combine(verdicts: list[str]) -> str:
    """One claim decided by several comparisons that must all hold: refuted if any is, confirmed if all are."""
    if not verdicts:
        return "undecided"
    if "refuted" in verdicts:
        return "refuted"
    return "confirmed" if all(v == "confirmed" for v in verdicts) else "undecided"
