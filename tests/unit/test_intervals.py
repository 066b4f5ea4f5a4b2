"""Bootstrap intervals and the verdict rule of benchmarks/transfer_comparison.py, on synthetic scores."""

from __future__ import annotations

import random

import pytest

from hydrahead.errors import HydraheadError
from hydrahead.intervals import combine, decide, paired_comparison, stratified_bootstrap


def cells(seed: int, shift: float = 0.0, cells: int = 4, per_cell: int = 20) -> list[list[float]]:
    """Per-sample scores 0-100 in cells (task x length), noisy, with `shift` added to every sample."""
    rng = random.Random(seed)
    return [[min(100.0, max(0.0, rng.gauss(50, 20) + shift)) for _ in range(per_cell)] for _ in range(cells)]


def test_beats_rule_confirms_refutes_and_stays_undecided():
    base = cells(0)
    higher = [[min(100.0, x + 30) for x in c] for c in base]
    lower = [[max(0.0, x - 30) for x in c] for c in base]
    up = paired_comparison(higher, base, "beats")
    assert up.verdict == "confirmed" and up.lo > 0 and up.diff == pytest.approx(up.a - up.b)
    assert paired_comparison(base, base, "beats").verdict == "undecided"  # equal: interval [0, 0]
    down = paired_comparison(lower, base, "beats")
    assert down.verdict == "refuted" and down.hi < 0
    # noise of the same size as the difference: the interval straddles 0
    noisy = [[x + random.Random(i).choice([-40.0, 45.0]) for i, x in enumerate(c)] for c in base]
    mixed = paired_comparison(noisy, base, "beats")
    assert mixed.lo < 0 < mixed.hi and mixed.verdict == "undecided"


def test_matches_rule_is_not_worse_by_more_than_the_margin():
    base = cells(1)
    assert paired_comparison(base, base, "matches", margin=5).verdict == "confirmed"
    slightly_worse = [[x - 1 for x in c] for c in base]
    assert paired_comparison(slightly_worse, base, "matches", margin=5).verdict == "confirmed"
    better = [[x + 20 for x in c] for c in base]
    assert paired_comparison(better, base, "matches", margin=5).verdict == "confirmed"
    assert paired_comparison(base, better, "matches", margin=5).verdict == "refuted"  # 20 points worse
    assert decide(-7.0, 2.0, "matches", 5) == "undecided"
    assert (decide(-5.0, -1.0, "matches", 5), decide(-9.0, -5.5, "matches", 5)) == ("confirmed", "refuted")


def test_pairing_removes_the_samples_own_difficulty():
    # samples vary from 0 to 100, but A is B + 2 on every sample: unpaired intervals overlap, the paired one is tight
    b = [[float(x) for x in range(0, 100, 5)]]
    a = [[x + 2 for x in b[0]]]
    c = paired_comparison(a, b, "beats")
    assert (c.lo, c.hi, c.verdict) == (2.0, 2.0, "confirmed")
    lo_b, hi_b = stratified_bootstrap(b, random.Random(0))
    assert hi_b - lo_b > 10


def test_bad_input_and_combining_verdicts():
    with pytest.raises(HydraheadError, match="same non-empty cells"):
        paired_comparison([[1.0, 2.0]], [[1.0]], "beats")
    with pytest.raises(HydraheadError, match="unknown rule 'wins'"):
        paired_comparison([[1.0]], [[1.0]], "wins")
    with pytest.raises(HydraheadError, match="positive margin"):
        decide(0.0, 0.0, "matches", 0)
    assert combine(["confirmed", "confirmed"]) == "confirmed"
    assert combine(["confirmed", "undecided"]) == "undecided"
    assert combine(["confirmed", "refuted"]) == "refuted"
    assert combine([]) == "undecided"
