"""The whole HydraHead pipeline on one model: score heads -> plan -> convert -> align -> distill ->
long context -> evaluate the hybrid against the original at 1x-16x native length -> a markdown report.

Every step keeps its output in the run directory and is skipped when that output already exists, so
a killed pipeline run again carries on (a stage in progress resumes from its checkpoint).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import TransferConfig


@dataclass
class PipelineConfig:
    teacher: str = "models/hydrahead-teacher-3m"
    out: str = "runs/pipeline"
    ratio: str = "7:1"
    granularity: str = "query"
    behaviours: list[str] = field(default_factory=lambda: ["retrieval", "multikey", "induction"])
    num_pairs: int = 8
    align_steps: int = 100
    distill_steps: int = 200
    long_steps: int = 50
    long_factor: int = 2  # stage 3 trains at this multiple of the native length
    batch_size: int = 8
    lr: float = 1e-3
    tasks: str = "niah_single_1,niah_multikey_1,niah_multivalue,vt"
    factors: tuple[int, ...] = (1, 2, 4, 8, 16)
    limit: int = 10
    seed: int = 0

    @classmethod
    def quick(cls, **kw) -> PipelineConfig:
        """A few minutes end to end: fewer pairs, steps, lengths and samples."""
        settings = {"behaviours": ["retrieval"], "num_pairs": 4, "align_steps": 20, "distill_steps": 30,
                    "long_steps": 10, "factors": (1, 2, 4), "limit": 5}
        return cls(**{**settings, **kw})


def _log(message: str) -> None:
    print(f"[pipeline] {message}", flush=True)


def run_pipeline(cfg: PipelineConfig, results: str | Path = "results/pipeline", progress: bool = True) -> Path:
    from ..atomic import final_of, new_results_dir
    from ..evaluation import evaluate
    from ..outputs import check_dir_writable
    from ..models import load_causal_lm, load_model
    from ..plots import plot_head_scores
    from ..selection import ScoreConfig, Scores, make_plan, score_heads
    check_dir_writable(results, "--results")  # before hours of training, not after
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name, fn):
        start = time.perf_counter()
        value = fn()
        timings[name] = round(time.perf_counter() - start, 1)
        _log(f"{name}: {timings[name]:.0f} s")
        return value

    teacher, tokenizer = load_causal_lm(cfg.teacher)
    native = int(getattr(teacher.config, "max_position_embeddings", 512))
    scores_path = out / "scores.json"
    if not scores_path.exists():
        config = ScoreConfig(behaviours=cfg.behaviours, length=native, num_pairs=cfg.num_pairs, seed=cfg.seed)
        timed("score heads", lambda: score_heads(teacher, tokenizer, config, cfg.teacher, progress=progress)
              .save(scores_path))
    scores = Scores.load(scores_path)
    plan = make_plan(scores.shape, "interp", cfg.ratio, cfg.granularity, scores=scores)
    plan.save(out / "plan.json")
    _log(plan.summary().splitlines()[1].strip())

    train_hybrid(cfg, out / "plan.json", out, native, progress=progress, timed=timed)

    lengths = [native * f for f in cfg.factors]
    hybrid = load_model(out / "long" / "model")
    evals = {}
    for name, model in (("original", teacher), ("hybrid 7:1" if cfg.ratio == "7:1" else f"hybrid {cfg.ratio}", hybrid)):
        evals[name] = timed(f"evaluate {name}", lambda m=model: evaluate(
            m, tokenizer, cfg.tasks, lengths, cfg.limit, cfg.seed, progress=progress))

    report = _report(cfg, plan, evals, timings, native)
    with new_results_dir(results, "pipeline") as partial:  # all or nothing
        plot_head_scores(scores, partial / "head_scores.png")
        _plot_models(evals, partial / "accuracy_vs_length.png", native)
        (partial / "report.md").write_text(report)
        (partial / "metrics.json").write_text(json.dumps({k: v.to_json() for k, v in evals.items()}, indent=1))
    folder = final_of(partial)
    print(report)
    _log(f"report: {folder / 'report.md'}")
    return folder


def train_hybrid(cfg: PipelineConfig, plan: str | Path, out: Path, native: int, options: dict | None = None,
                 progress: bool = True, timed=None) -> Path:
    """Stages 1-3 for one plan (and conversion options) into out/align, out/distill, out/long; a stage
    whose model is already there is skipped. Returns the final hybrid's directory."""
    from .loop import train_stage

    stages = [("align", cfg.align_steps, native, {"plan": str(plan), "options": options or {}}),
              ("distill", cfg.distill_steps, native, {"init": str(out / "align" / "model")}),
              ("long", cfg.long_steps, native * cfg.long_factor, {"init": str(out / "distill" / "model")})]
    for stage, steps, seq_len, source in stages:
        if (out / stage / "model" / "config.json").exists():
            continue
        micro = max(1, min(cfg.batch_size, 8192 // seq_len))
        while cfg.batch_size % micro:
            micro -= 1
        config = TransferConfig(stage=stage, teacher=cfg.teacher, out=str(out / stage), steps=steps, seq_len=seq_len,
                                batch_size=cfg.batch_size, micro_batch=micro, lr=cfg.lr, seed=cfg.seed,
                                warmup=max(1, steps // 10), checkpoint_every=max(1, steps // 4), **source)
        run = (lambda c=config: train_stage(c, progress=progress))
        timed(f"stage {stage}", run) if timed else run()
    return out / "long" / "model"


def _plot_models(evals: dict, path: Path, native: int) -> Path:
    from ..plots import _pyplot, _save, length_axis

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for (name, result), style in zip(evals.items(), ("-", "--", ":")):
        lengths = sorted({n for per in result.scores.values() for n in per})
        mean = [sum(per[n] for per in result.scores.values()) / len(result.scores) for n in lengths]
        ax.plot(lengths, mean, style, marker="o", label=f"{name} (mean of tasks)")
    length_axis(ax, lengths, native)
    ax.set_ylabel("score (%)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _report(cfg: PipelineConfig, plan, evals: dict, timings: dict, native: int) -> str:
    setup = (f"Plan: {plan.summary().splitlines()[1].strip()}; KV {plan.kv_bytes_per_token()} B/token "
             f"(original {plan.full_kv_bytes_per_token()}). Stages: align {cfg.align_steps}, distill "
             f"{cfg.distill_steps}, long {cfg.long_steps} steps at {cfg.long_factor}x native ({native}) length, "
             f"{cfg.batch_size} sequences per step.")
    lines = [f"# HydraHead pipeline on {cfg.teacher}", "", setup, ""]
    for name, result in evals.items():
        lines += [f"## {name}", "", result.table(), ""]
    lines += ["![heads](head_scores.png)", "", "![accuracy vs length](accuracy_vs_length.png)", "",
              "| step | seconds |", "|---|---:|", *(f"| {k} | {v:.0f} |" for k, v in timings.items()), ""]
    return "\n".join(lines)
