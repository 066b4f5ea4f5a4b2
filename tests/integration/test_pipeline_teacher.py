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
    # the report explains itself: plan, losses, samples per cell, predictions, versions, time, doubts
    for part in ("## The plan", "FA heads [", "## Training", "| long | 1 | 1024 |", "2 samples per task and length",
                 "## Sample predictions", "Software: hydrahead ", "Wall time: "):
        assert part in report, part
    assert (folder / "losses.png").stat().st_size > 10_000
    assert len((folder / "samples.jsonl").read_text().splitlines()) == 2 * 2 * 2  # models x lengths x samples
    hybrid_cells = [v for per in metrics["hybrid 7:1"]["results"].values() for v in per.values()]
    assert ("> **Warning.** **hybrid 7:1 scores below 5" in report) == (max(hybrid_cells) < 5)
    for stage in ("align", "distill", "long"):
        assert (tmp_path / "run" / stage / "model" / "config.json").exists()
    capsys.readouterr()
    again = run_pipeline(cfg, tmp_path / "results", progress=False)
    log = capsys.readouterr().out
    assert again != folder and "score heads:" not in log and "stage align:" not in log  # nothing retrained
