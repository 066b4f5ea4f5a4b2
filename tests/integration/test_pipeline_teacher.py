"""The whole pipeline on the shipped teacher, with a handful of steps: every step runs, the report is
written, and a second run reuses what the first one finished."""

from __future__ import annotations

import json

from hydrahead.transfer.pipeline import PipelineConfig, run_pipeline


def test_pipeline_runs_end_to_end_and_resumes(tmp_path, capsys):
    cfg = PipelineConfig(out=str(tmp_path / "run"), behaviours=["retrieval"], num_pairs=2, align_steps=2,
                         distill_steps=2, long_steps=1, batch_size=2, tasks="niah_single_1", factors=(1, 2), limit=2)
    folder = run_pipeline(cfg, tmp_path / "results", progress=False)
    report = (folder / "report.md").read_text()
    assert "## original" in report and "## hybrid 7:1" in report and "| niah_single_1 |" in report
    assert (folder / "head_scores.png").stat().st_size > 10_000
    assert (folder / "accuracy_vs_length.png").stat().st_size > 10_000
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) == {"original", "hybrid 7:1"}
    for stage in ("align", "distill", "long"):
        assert (tmp_path / "run" / stage / "model" / "config.json").exists()
    capsys.readouterr()
    again = run_pipeline(cfg, tmp_path / "results", progress=False)
    log = capsys.readouterr().out
    assert again != folder and "score heads:" not in log and "stage align:" not in log  # nothing retrained
