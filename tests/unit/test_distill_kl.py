"""benchmarks/distill_kl.py: the windowed KL of a stage's log, on synthetic logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import script_fixture


distill_kl = script_fixture("distill_kl")


def write_run(root: Path, name: str, steps: int, stage: str = "distill") -> Path:
    log = root / name / stage / "training" / "log.jsonl"
    log.parent.mkdir(parents=True)
    # kl = 1 / step and lr = step / 1000: every window's mean and every learning rate is known exactly
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0, "kl": 1.0 / s, "ce": 1.0, "lr": s / 1000}) + "\n"
                           for s in range(1, steps + 1)))
    return root / name


def test_window_mean_sd_and_lr(distill_kl, tmp_path):
    rows = distill_kl.log_rows(write_run(tmp_path, "a", 40), "distill")
    w = distill_kl.window(rows, 30, 10)
    values = [1.0 / s for s in range(21, 31)]
    assert w["kl"] == pytest.approx(sum(values) / 10)
    assert w["sd"] == pytest.approx((sum((v - w["kl"]) ** 2 for v in values) / 9) ** 0.5)
    assert w["lr"] == pytest.approx(0.030)
    assert distill_kl.window(rows, 41, 10) is None  # step 41 was never logged
    assert distill_kl.window(rows, 5, 10) is None  # the window would start before step 1


def test_table_marks_steps_a_run_has_not_reached(distill_kl, tmp_path):
    runs = {name: distill_kl.log_rows(write_run(tmp_path, name, n), "distill") for name, n in (("short", 20), ("long", 40))}
    lines = distill_kl.table(runs, [20, 40], 20).splitlines()
    short = [c.strip() for c in lines[2].strip("|").split("|")]
    long = [c.strip() for c in lines[3].strip("|").split("|")]
    assert short[:2] == ["short", "20"] and short[3] == "-"
    assert long[1] == "40" and long[3].startswith(f"{sum(1.0 / s for s in range(21, 41)) / 20:.3f}")
    assert long[3].endswith("(4.0e-02)")


def test_a_missing_log_or_stage_without_kl_is_named(distill_kl, tmp_path):
    with pytest.raises(SystemExit, match="no distill log"):
        distill_kl.log_rows(tmp_path / "nothing", "distill")
    log = tmp_path / "align_only" / "distill" / "training" / "log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps({"step": 1, "loss": 0.5, "lr": 1e-3}) + "\n")
    with pytest.raises(SystemExit, match="no 'kl' column"):
        distill_kl.log_rows(tmp_path / "align_only", "distill")
