"""Head selection on the shipped teacher: the scores mean something (ablating the top heads breaks
retrieval, ablating as many random heads does not), and score -> plan runs from the command line."""

from __future__ import annotations

import json

import pytest

from hydrahead.cli import main
from hydrahead.models import load_causal_lm
from hydrahead.plan import HeadPlan, ModelShape
from hydrahead.selection import ScoreConfig, ablation_curve, score_heads

TEACHER = "models/hydrahead-teacher-3m"


@pytest.fixture(scope="module")
def teacher():
    return load_causal_lm(TEACHER)


def test_ablating_the_top_heads_breaks_retrieval_and_random_heads_do_not(teacher):
    model, tokenizer = teacher
    config = ScoreConfig(behaviours=["retrieval"], num_pairs=4, retrieval_samples=0)
    scores = score_heads(model, tokenizer, config, TEACHER, progress=False)
    curve = ablation_curve(model, tokenizer, scores.ranking(), [2], random_seeds=3, limit=20, progress=False)
    assert curve.dense >= 90
    random_mean = sum(curve.random[2]) / len(curve.random[2])
    assert curve.top[2] <= random_mean - 50, curve


def test_score_then_plan_from_the_command_line(tmp_path, capsys):
    scores, png, plan = tmp_path / "scores.json", tmp_path / "heads.png", tmp_path / "plan.json"
    code = main(["score", "--model", TEACHER, "--behaviours", "retrieval,induction", "--num_pairs", "2",
                 "--retrieval_samples", "2", "--out", str(scores), "--plot", str(png), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "| retrieval |" in out and "fused ranking: L" in out
    assert png.stat().st_size > 10_000
    assert not (tmp_path / "scores.partial.json").exists()  # removed once the sweep finished
    data = json.loads(scores.read_text())
    assert set(data["behaviours"]) == {"retrieval", "induction"} and len(data["fused"]) == 4

    assert main(["plan", "--scores", str(scores), "--ratio", "7:1", "--granularity", "kv", "--out", str(plan)]) == 0
    loaded = HeadPlan.load(plan)
    assert loaded.granularity == "kv" and loaded.num_fa == 4 and loaded.meta["strategy"] == "interp"
    assert loaded.shape == ModelShape(4, 8, 2, 32)

    assert main(["plan", "--scores", str(scores), "--ratio", "5:1", "--out", str(plan)]) == 2
    assert "ratios it can meet: 1:1, 3:1, 7:1, 15:1, 31:1" in capsys.readouterr().err
    assert main(["plan", "--model", TEACHER, "--strategy", "layerwise", "--ratio", "3:1", "--out", str(plan)]) == 0
    assert HeadPlan.load(plan).fa_heads[3] == list(range(8))


def test_score_errors_and_interruption(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.json"
    assert main(["score", "--model", TEACHER, "--behaviours", "retrieval,copying", "--out", str(out)]) == 2
    assert "unknown behaviour 'copying'" in capsys.readouterr().err
    assert main(["score", "--model", TEACHER, "--weights", "retrieval=x", "--out", str(out)]) == 2
    assert "bad weight" in capsys.readouterr().err

    from hydrahead import selection

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(selection, "score_heads", interrupted)
    assert main(["score", "--model", TEACHER, "--out", str(out), "--quiet"]) == 130
    assert "s.partial.json; run the same command to resume" in capsys.readouterr().err
