"""The pipeline report explains itself (plan, losses, samples per cell, predictions, versions, time, doubts),
and its loss plots are readable (a y label, smoothing, plain tick labels)."""

import json

import pytest

from hydrahead.evaluation import EvalResult
from hydrahead.plan import HeadPlan, ModelShape
from hydrahead.plots import _pyplot, ema, plot_loss_log, stage_losses
from hydrahead.transfer.pipeline import PipelineConfig, _report, doubts, stage_summaries

NATIVE = 512


def result(scores: dict[str, dict[int, float]], n: int = 10) -> EvalResult:
    records = [{"task": task, "length": length, "depth": None, "index": i, "input": "...", "answer_prefix": "",
                "prediction": f"{1000 + i} | next", "references": [str(1000 + i)], "score": float(i % 2)}
               for task, per in scores.items() for length in per for i in range(n)]
    return EvalResult(scores, {}, {}, records)


ORIGINAL = result({"niah_single_1": {512: 100.0, 1024: 50.0, 2048: 0.0}, "vt": {512: 100.0, 1024: 54.0, 2048: 0.0}})
GOOD = result({"niah_single_1": {512: 100.0, 1024: 100.0, 2048: 100.0}, "vt": {512: 22.0, 1024: 20.0, 2048: 12.0}})
BROKEN = result({"niah_single_1": {512: 0.0, 1024: 0.0, 2048: 0.0}, "vt": {512: 2.0, 1024: 0.0, 2048: 0.0}})
WEAK = result({"niah_single_1": {512: 30.0, 1024: 30.0, 2048: 30.0}, "vt": {512: 10.0, 1024: 10.0, 2048: 10.0}})


def test_doubts_name_a_broken_model_and_one_far_below_the_original_at_native_length():
    assert doubts({"original": ORIGINAL, "hybrid 7:1": GOOD}, NATIVE) == []  # the demo's case: 61 against 100
    (broken,) = doubts({"original": ORIGINAL, "hybrid 7:1": BROKEN}, NATIVE)
    assert "hybrid 7:1 scores below 5 in every cell (at most 2.0)" in broken and "scores 100.0 there" in broken
    (weak,) = doubts({"original": ORIGINAL, "hybrid 7:1": WEAK}, NATIVE)
    assert "hybrid 7:1 scores 20.0 at the native length (512 tokens), far below the original's 100.0" in weak
    (teacher,) = doubts({"original": BROKEN, "hybrid 7:1": GOOD}, NATIVE)
    assert teacher.startswith("**original scores below 5")


def write_stage(out, stage, losses, seq_len):
    work = out / stage / "training"
    work.mkdir(parents=True)
    (work / "config.json").write_text(json.dumps({"stage": stage, "seq_len": seq_len}))
    rows = [{"step": i + 1, "loss": v, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1.0} for i, v in enumerate(losses)]
    (work / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return work / "log.jsonl"


@pytest.fixture
def stages(tmp_path):
    write_stage(tmp_path, "align", [1.0, 0.5, 0.25, 0.125], 512)
    write_stage(tmp_path, "distill", [2.0, 1.5, 1.25], 512)
    write_stage(tmp_path, "long", [1.2, 1.1], 1024)
    return stage_summaries(tmp_path)


def test_report_says_what_was_run_and_why_the_numbers_are_what_they_are(stages):
    plan = HeadPlan(ModelShape(4, 8, 2, 32), [[1], [3], [5], [7]])
    cfg = PipelineConfig(tasks="niah_single_1,vt", factors=(1, 2, 4), limit=10)
    timings = {"evaluate original": 188.0, "evaluate hybrid 7:1": 92.0}
    report = _report(cfg, plan, {"original": ORIGINAL, "hybrid 7:1": BROKEN}, timings, NATIVE, stages, 876.4)
    import hydrahead

    assert report.index("> **Warning.** **hybrid 7:1 scores below 5") < report.index("## The plan")
    assert "layer   3  .......F  FA heads [7]" in report and "(head_scores.png)" in report
    assert "10 samples per task and length (one sample is 10 points)" in report
    assert f"Software: hydrahead {hydrahead.__version__}, torch " in report and ", python 3." in report
    assert "Wall time: 14 min 36 s (reused from runs/pipeline: score heads, stage align, stage distill, stage long)" in report
    assert "| align | 4 | 512 | 1.0000 | 0.1250 |" in report and "| long | 2 | 1024 | 1.2000 | 1.1000 |" in report
    assert "(losses.png)" in report
    predictions = report[report.index("## Sample predictions"):]
    assert "### niah_single_1" in predictions and "### vt" in predictions
    # two per model at the native and the longest length, with references; a pipe in a prediction is escaped
    assert predictions.count("| hybrid 7:1 | 512 | 1000 | 1000 \\| next | 0 |") == 2
    assert predictions.count("| original | 2048 | 1001 | 1001 \\| next | 100 |") == 2
    assert "Warning" not in _report(cfg, plan, {"original": ORIGINAL, "hybrid 7:1": GOOD}, {}, NATIVE, stages, 1.0)


def test_moving_average_smooths_and_starts_at_the_first_value():
    noisy = [1.0, 3.0] * 50
    smooth = ema(noisy, span=10)
    assert smooth[0] == 1.0 and max(smooth[20:]) - min(smooth[20:]) < 0.4  # raw: 2.0 apart
    assert ema([5.0]) == [5.0]


def tick_texts(ax):
    ax.figure.canvas.draw()
    return [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True) if t.get_text()]


@pytest.mark.parametrize("losses", [[2.5 * 0.97 ** i for i in range(120)], [1.9 + 0.1 * (i % 3) for i in range(60)]])
def test_loss_axes_have_a_label_smoothing_and_plain_ticks(tmp_path, losses):
    log = write_stage(tmp_path, "align", losses, 512)
    plt = _pyplot()
    fig, ax = plt.subplots()
    stage_losses(ax, [json.loads(line) for line in log.read_text().splitlines()], "align")
    assert ax.get_ylabel() == "loss (relative MSE of the attention outputs)" and ax.get_xlabel() == "step"
    raw, smooth = ax.lines
    assert raw.get_alpha() < 0.5 and smooth.get_alpha() is None
    assert list(raw.get_ydata()) == losses and list(smooth.get_ydata()) != losses
    texts = tick_texts(ax)
    assert len(texts) >= 2 and all("10^" not in t and "\\times" not in t and "x10" not in t for t in texts), texts
    plt.close(fig)
    assert plot_loss_log(log, tmp_path / "loss.png", title="stage align").stat().st_size > 5_000


def test_pipeline_recipe_options_only_name_what_differs_from_the_defaults():
    from hydrahead.transfer.pipeline import recipe_options

    assert recipe_options(PipelineConfig()) == {}  # runs made before the setting existed still resume
    assert recipe_options(PipelineConfig(fa_position="rope")) == {"fa_position": "rope"}
