"""benchmarks/recipe_table.py: the task-by-task table at every length, seeds pooled, the goal beside it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import script_fixture

table = script_fixture("recipe_table")
RECIPE, CONTROL = "nope_logscale + skills mixture + no_repeat heads@4x", "all FA (RoPE) + skills mixture@4x"


def write_row(table, rows, tag: str, score, n: int = 4) -> None:
    """A row whose samples score score(task, length) (0-1) in every cell of the table."""
    lengths = [512 * f for f in table.FACTORS]
    records = [{"task": t, "length": length, "score": score(t, length)}
               for t in table.TASKS.split(",") for length in lengths for _ in range(n)]
    records += [{"task": "cwe", "length": 512, "score": score("cwe", 512)} for _ in range(n)]
    rows.mkdir(exist_ok=True)
    (rows / f"{tag}.json").write_text(json.dumps({"run": tag, "native": 512, "model_digest": "x", "records": records}))


def test_the_table_pools_seeds_and_judges_the_goal(table, tmp_path):
    rows = tmp_path / "rows"
    write_row(table, rows, "original", lambda t, n: 1.0 if n == 512 else 0.0)
    s0, s1 = table.runs_of(RECIPE, [0, 1])
    write_row(table, rows, s0, lambda t, n: 0.9 if t != "cwe" else 0.8)  # cwe 80% of the teacher: short
    write_row(table, rows, s1, lambda t, n: 1.0 if t != "niah_single_1" or n < 8192 else 0.9)  # 90 at 16x: short
    text, curves = table.render(table.columns(rows, RECIPE, [CONTROL], [0, 1]), 512)
    lines = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in text.splitlines()[4:]}
    assert "| 95.0 [95.0, 95.0] | 95% | met |" in lines[("niah_multikey_1", "512")]
    assert "| 90.0 [90.0, 90.0] | 90% | met |" in lines[("cwe", "512")]
    assert lines[("niah_single_1", "8192")].endswith("| seeds: 90, 90 | not met |")
    assert "| 0.0 [0.0, 0.0] | 95.0 [95.0, 95.0] |" in lines[("vt", "4096")]  # teacher 0, recipe pooled
    assert "recipe: " + RECIPE + " (2 seeds)" in text and "control:" not in text  # no control row: no column
    assert [round(m) for m, lo, hi in curves["teacher"]] == [100, 0, 0, 0, 0]
    write_row(table, rows, table.runs_of(CONTROL, [0])[0], lambda t, n: 0.5)
    text, _ = table.render(table.columns(rows, RECIPE, [CONTROL], [0, 1]), 512)
    assert f"control: {CONTROL} (1 seed)" in text


def test_a_row_is_never_mixed_with_a_retrained_model(table, tmp_path):
    rows, model = tmp_path / "rows", tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    write_row(table, rows, "run", lambda t, n: 1.0)  # measured on a model of digest "x"
    with pytest.raises(SystemExit, match="measured on another model"):
        table.evaluate_run("run", model, rows, "teacher", 20, None)
    assert table.evaluate_run("absent", tmp_path / "nothing", rows, "teacher", 20, None).startswith("missing")


def test_unknown_variants_and_budgets_are_refused(table):
    with pytest.raises(SystemExit, match="unknown variant 'nope'"):
        table.runs_of("nope@4x", [0])
    with pytest.raises(SystemExit, match="unknown budget '3x'"):
        table.runs_of(RECIPE.replace("4x", "3x"), [0])
