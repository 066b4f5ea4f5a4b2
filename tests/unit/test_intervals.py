"""Bootstrap intervals and the verdict rule of benchmarks/transfer_comparison.py, on synthetic scores."""

from __future__ import annotations

import random

import pytest

from hydrahead.errors import HydraheadError
from hydrahead.intervals import combine, decide, paired_comparison, paired_comparison_over_runs, stratified_bootstrap


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


def test_resampling_the_runs_covers_runs_that_differ_more_than_their_samples():
    # A: two training seeds that retrieve; B: four random plans, two retrieve as A does and two collapse
    a = [cells(2, shift=20), cells(3, shift=20)]
    good, bad = cells(4, shift=20), [[0.0] * 20 for _ in range(4)]
    b = [good, bad, cells(5, shift=20), bad]
    pooled_b = [[sum(xs) / 4 for xs in zip(*c)] for c in zip(*b)]
    pooled_a = [[sum(xs) / 2 for xs in zip(*c)] for c in zip(*a)]
    over_samples = paired_comparison(pooled_a, pooled_b, "beats")
    over_runs = paired_comparison_over_runs(a, b, "beats")
    # the same means, but only the runs' draw sees that B might have been four plans that retrieve
    assert over_runs.diff == pytest.approx(over_samples.diff) and over_runs.a == pytest.approx(over_samples.a)
    assert over_samples.verdict == "confirmed"
    assert over_runs.verdict == "undecided" and over_runs.lo <= 0 < over_runs.hi
    assert over_runs.hi - over_runs.lo > 3 * (over_samples.hi - over_samples.lo)
    # every plan collapses: the difference holds whichever plans are drawn
    assert paired_comparison_over_runs(a, [bad, bad, bad], "beats").verdict == "confirmed"


def test_with_one_run_a_side_it_is_the_paired_bootstrap():
    a, b = cells(6, shift=5), cells(7)
    one = paired_comparison_over_runs([a], [b], "beats")
    plain = paired_comparison(a, b, "beats")
    assert (one.a, one.b, one.diff) == pytest.approx((plain.a, plain.b, plain.diff))
    assert one.lo == pytest.approx(plain.lo, abs=1.0) and one.hi == pytest.approx(plain.hi, abs=1.0)


def test_runs_must_hold_the_same_cells():
    with pytest.raises(HydraheadError, match="runs on both sides"):
        paired_comparison_over_runs([cells(0)], [], "beats")
    with pytest.raises(HydraheadError, match="same non-empty cells"):
        paired_comparison_over_runs([cells(0)], [cells(1, per_cell=10)], "beats")
    with pytest.raises(HydraheadError, match="unknown rule"):
        paired_comparison_over_runs([cells(0)], [cells(1)], "wins")
