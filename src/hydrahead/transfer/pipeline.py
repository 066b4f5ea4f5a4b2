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

from .config import DEFAULT_BEHAVIOURS, DISTILL_MIXTURES, TransferConfig, TransferError


@dataclass
class PipelineConfig:
    teacher: str = "models/hydrahead-teacher-3m"
    out: str = "runs/pipeline"
    ratio: str = "7:1"
    granularity: str = "query"
    behaviours: list[str] = field(default_factory=lambda: list(DEFAULT_BEHAVIOURS))  # that pick the FA heads
    num_pairs: int = 8
    # the recipe that met issue 15's goal (benchmarks/rows/skills-native100/RULE-long-stage-mixture.md): 4x the
    # earlier 100/200/50 steps, the cwe-weighted skills mixture in the distill and long stages
    align_steps: int = 400
    distill_steps: int = 800
    long_steps: int = 200
    long_factor: int = 2  # stage 3 trains at this multiple of the native length
    fa_position: str = "nope_logscale"  # the FA heads' positions (HybridOptions.fa_position): nope_logscale | rope | rope_clamped
    head_weight: float = 0.0  # align: weight of the per-head MSE against the original heads (0: layer MSE only)
    distill_mixture: str = "skills-cwe"  # distill: the data mixture, a name of transfer.config.DISTILL_MIXTURES
    long_mixture: str = "skills-cwe"  # long: the data mixture (a name of DISTILL_MIXTURES too)
    batch_size: int = 8
    activation_checkpointing: bool = False  # distill and long: recompute each layer in the backward pass (memory)
    lr: float = 1e-3
    tasks: str = "niah_single_1,niah_multikey_1,niah_multivalue,vt"
    factors: tuple[int, ...] = (1, 2, 4, 8, 16)
    limit: int = 10
    seed: int = 0

    def __post_init__(self):
        # refused when the config is made: a bad setting found after the head scores (minutes) or a stage (hours)
        # would waste them. fa_position is checked by HybridOptions at the start of run_pipeline (it imports torch).
        for name in ("distill_mixture", "long_mixture"):
            if getattr(self, name) not in DISTILL_MIXTURES:
                raise TransferError(f"{name}: unknown mixture {getattr(self, name)!r}; "
                                    f"mixtures are {', '.join(DISTILL_MIXTURES)}")
        for name in ("align_steps", "distill_steps", "long_steps", "long_factor", "batch_size", "limit"):
            if getattr(self, name) < 1:
                raise TransferError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.head_weight < 0:
            raise TransferError(f"head_weight must be at least 0, got {self.head_weight}")
        if not self.factors or min(self.factors) < 1:
            raise TransferError(f"factors must be one or more multiples of the native length (>= 1), "
                                f"got {self.factors}")

    @classmethod
    def quick(cls, **kw) -> PipelineConfig:
        """A few minutes end to end: fewer pairs, steps, lengths and samples."""
        return cls(**{**QUICK, **kw})


# What shapes a pipeline run's scores and models: a --out made with one set is never reused with another.
SETTINGS = ("teacher", "ratio", "granularity", "behaviours", "num_pairs", "align_steps", "distill_steps", "long_steps",
            "long_factor", "batch_size", "lr", "fa_position", "head_weight", "distill_mixture", "long_mixture", "seed")
# settings added since folders began to note theirs, with the value every earlier run had: an older folder that does
# not name one was made with this value
SETTINGS_BEFORE_NOTED = {"long_mixture": "corpus"}


def check_settings(folder: str | Path, settings: dict, flag: str = "--out", file: str = "settings.json",
                   before_noted: dict | None = None) -> None:
    """A folder of runs holds runs of one set of settings: noted in `file` when the folder is new, and a later run
    with other settings is refused (naming what differs) instead of reusing what was trained for the old ones.
    `before_noted`: settings that older notes lack, with the value those runs were made with."""
    from ..jsonfile import write_json_atomic

    path = Path(folder) / file
    new = json.loads(json.dumps(settings))  # tuples as lists, as read back
    if path.exists():
        old = {**(before_noted or {}), **json.loads(path.read_text())}
        if old != new:
            diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
            raise TransferError(f"{folder} holds runs made with other settings (old, new): {diff}; "
                                f"use another {flag}")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, new)


def check_run_folder(cfg: PipelineConfig) -> None:
    """check_settings for a pipeline's --out. A folder made before the settings were noted is judged by its head
    scores' behaviours (the default changed on 2026-12-02): its plan and models follow from them."""
    out = Path(cfg.out)
    scores = out / "scores.json"
    if scores.exists() and not (out / "settings.json").exists():
        made = json.loads(scores.read_text()).get("config", {}).get("behaviours")
        if made is not None and list(made) != list(cfg.behaviours):
            raise TransferError(f"{out} holds head scores of the behaviours {','.join(made)}, not "
                                f"{','.join(cfg.behaviours)}; use another --out, or --behaviours {','.join(made)}")
    check_settings(out, {k: getattr(cfg, k) for k in SETTINGS}, before_noted=SETTINGS_BEFORE_NOTED)


# what `hydrahead pipeline --quick` changes
QUICK = {"behaviours": ["retrieval"], "num_pairs": 4, "align_steps": 20, "distill_steps": 30, "long_steps": 10,
         "factors": (1, 2, 4), "limit": 5}


def _log(message: str) -> None:
    print(f"[pipeline] {message}", flush=True)


def run_pipeline(cfg: PipelineConfig, results: str | Path = "results/pipeline", progress: bool = True) -> Path:
    from ..atomic import final_of, new_results_dir
    from ..attention import HybridOptions
    from ..evaluation import evaluate
    from ..outputs import check_dir_writable
    from ..models import load_causal_lm, load_model
    from ..plots import plot_head_scores
    from ..selection import ScoreConfig, Scores, get_behaviours, make_plan, score_heads
    started = time.perf_counter()
    check_dir_writable(results, "--results")  # before hours of training, not after
    HybridOptions(fa_position=cfg.fa_position)  # refuses an unknown one before the head scores, not after
    get_behaviours(cfg.behaviours)  # likewise an unknown behaviour
    check_run_folder(cfg)
    out = Path(cfg.out)
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

    train_hybrid(cfg, out / "plan.json", out, native, recipe_options(cfg), progress=progress, timed=timed,
                 stage_settings={"align": {"head_weight": cfg.head_weight}} if cfg.head_weight else None)

    lengths = [native * f for f in cfg.factors]
    hybrid = load_model(out / "long" / "model")
    evals = {}
    for name, model in (("original", teacher), ("hybrid 7:1" if cfg.ratio == "7:1" else f"hybrid {cfg.ratio}", hybrid)):
        evals[name] = timed(f"evaluate {name}", lambda m=model: evaluate(
            m, tokenizer, cfg.tasks, lengths, cfg.limit, cfg.seed, progress=progress))

    stages = stage_summaries(out)
    report = _report(cfg, plan, evals, timings, native, stages, time.perf_counter() - started)
    with new_results_dir(results, "pipeline") as partial:  # all or nothing
        plot_head_scores(scores, partial / "head_scores.png", plan)
        _plot_models(evals, partial / "accuracy_vs_length.png", native)
        _plot_stages(stages, partial / "losses.png")
        with (partial / "samples.jsonl").open("w") as f:  # every prediction, for what the report only samples
            for name, result in evals.items():
                for record in result.records:
                    f.write(json.dumps({"model": name, **record}, ensure_ascii=False) + "\n")
        (partial / "report.md").write_text(report)
        (partial / "metrics.json").write_text(json.dumps({k: v.to_json() for k, v in evals.items()}, indent=1))
    folder = final_of(partial)
    print(report)
    _log(f"report: {folder / 'report.md'}")
    return folder


def recipe_options(cfg: PipelineConfig) -> dict:
    """The conversion options the pipeline's settings ask for; only those that differ from HybridOptions'
    defaults, so that a run made before a setting existed resumes."""
    from ..attention.options import HybridOptions

    return {} if cfg.fa_position == HybridOptions.fa_position else {"fa_position": cfg.fa_position}


def train_hybrid(cfg: PipelineConfig, plan: str | Path, out: Path, native: int, options: dict | None = None,
                 progress: bool = True, timed=None, stage_settings: dict[str, dict] | None = None) -> Path:
    """Stages 1-3 for one plan (and conversion options) into out/align, out/distill, out/long; a stage
    whose model is already there is skipped. `stage_settings` maps a stage name to further TransferConfig
    keys for it (e.g. {"align": {"head_weight": 1.0}}). Returns the final hybrid's directory."""
    stage_settings = stage_settings or {}
    unknown = sorted(set(stage_settings) - set(STAGES))
    if unknown:
        raise ValueError(f"stage_settings: unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
    from .loop import train_stage

    recompute = {"activation_checkpointing": cfg.activation_checkpointing}  # align refuses it (config.py)
    stages = [("align", cfg.align_steps, native, {"plan": str(plan), "options": options or {}}),
              ("distill", cfg.distill_steps, native, {"init": str(out / "align" / "model"),
                                                      "mixture": DISTILL_MIXTURES[cfg.distill_mixture], **recompute}),
              ("long", cfg.long_steps, native * cfg.long_factor, {"init": str(out / "distill" / "model"),
                                                                  "mixture": DISTILL_MIXTURES[cfg.long_mixture],
                                                                  **recompute})]
    for stage, steps, seq_len, source in stages:
        if (out / stage / "model" / "config.json").exists():
            continue
        micro = max(1, min(cfg.batch_size, 8192 // seq_len))
        while cfg.batch_size % micro:
            micro -= 1
        config = TransferConfig(stage=stage, teacher=cfg.teacher, out=str(out / stage), steps=steps, seq_len=seq_len,
                                batch_size=cfg.batch_size, micro_batch=micro, lr=cfg.lr, seed=cfg.seed,
                                warmup=max(1, steps // 10), checkpoint_every=max(1, steps // 4),
                                **{**source, **stage_settings.get(stage, {})})
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


STAGES = ("align", "distill", "long")


def stage_summaries(out: Path) -> dict[str, dict]:
    """Per trained stage in `out`: its logged rows, steps, sequence length and first / final loss."""
    from ..plots import read_log

    stages = {}
    for stage in STAGES:
        log = out / stage / "training" / "log.jsonl"
        rows = read_log(log) if log.is_file() else []
        if not rows:
            continue
        config = json.loads((out / stage / "training" / "config.json").read_text())
        stages[stage] = {"rows": rows, "steps": rows[-1]["step"], "seq_len": config.get("seq_len"),
                         "first_loss": rows[0]["loss"], "final_loss": rows[-1]["loss"]}
    return stages


def _plot_stages(stages: dict[str, dict], path: Path) -> Path | None:
    """The loss curves of the three stages side by side (each its own loss, so each its own y axis)."""
    from ..plots import _pyplot, _save, stage_losses

    if not stages:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.4), squeeze=False)
    for ax, (stage, info) in zip(axes[0], stages.items()):
        stage_losses(ax, info["rows"], stage, f"stage {stage}: {info['steps']} steps at {info['seq_len']} tokens")
    return _save(fig, path)


def _mean_at(result, length: int) -> float | None:
    values = [per[length] for per in result.scores.values() if length in per]
    return sum(values) / len(values) if values else None


def doubts(evals: dict, native: int, reference: str = "original") -> list[str]:
    """What in the scores should not be believed as it stands: a model below 5 in every cell (a broken
    model, not a weak one), or a model far below the reference at the native length, where the
    reference is at home and the transfer should have recovered it."""
    out = []
    base = _mean_at(evals[reference], native) if reference in evals else None
    for name, result in evals.items():
        cells = [v for per in result.scores.values() for v in per.values()]
        if cells and max(cells) < 5:
            known = f" (the {reference} scores {base:.1f} there)" if base is not None and name != reference else ""
            out.append(f"**{name} scores below 5 in every cell (at most {max(cells):.1f}).** A working model scores far "
                       f"higher at least at its native length of {native} tokens{known}. Scores this low point at a "
                       "fault (in the conversion, the cache or the decoding) rather than a weak model: check its "
                       "answers in samples.jsonl and with `hydrahead generate` before reading anything into them.")
            continue
        own = _mean_at(result, native)
        if name != reference and base is not None and own is not None and own < base / 2 and base - own >= 20:
            out.append(f"**{name} scores {own:.1f} at the native length ({native} tokens), far below the {reference}'s "
                       f"{base:.1f}.** The transfer has not recovered what the conversion lost; train longer "
                       "(--align_steps, --distill_steps) before comparing the models at longer lengths.")
    return out


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _cell(text, width: int = 60) -> str:
    """Text fit for a markdown table cell: one line, pipes escaped, long text cut."""
    text = " ".join(str(text).split())
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


def _samples_per_cell(evals: dict) -> str:
    from collections import Counter

    counts = Counter((name, r["task"], r["length"]) for name, result in evals.items() for r in result.records)
    low, high = min(counts.values(), default=0), max(counts.values(), default=0)
    each = f"{low}" if low == high else f"{low}-{high}"
    return f"{each} samples per task and length" + (f" (one sample is {100 / low:g} points)" if low else "")


def _predictions(evals: dict, native: int, per_cell: int = 2) -> list[str]:
    """A few predictions per task next to their references: the first samples at the native length and
    at the longest length, for every model."""
    lines = []
    tasks = list(dict.fromkeys(r["task"] for result in evals.values() for r in result.records))
    for task in tasks:
        lines += [f"### {task}", "", "| model | length | references | prediction | score |", "|---|---:|---|---|---:|"]
        lengths = sorted({r["length"] for result in evals.values() for r in result.records if r["task"] == task})
        for length in sorted({min(lengths, key=lambda n: abs(n - native)), lengths[-1]}):
            for name, result in evals.items():
                rows = [r for r in result.records if r["task"] == task and r["length"] == length][:per_cell]
                lines += [f"| {name} | {length} | {_cell(', '.join(r['references']))} | {_cell(r['prediction'])} | "
                          f"{100 * r['score']:.0f} |" for r in rows]
        lines.append("")
    return lines


def _report(cfg: PipelineConfig, plan, evals: dict, timings: dict, native: int, stages: dict | None = None,
            wall_s: float | None = None) -> str:
    from ..versions import versions_line

    stages = stages or {}
    lengths = sorted({n for result in evals.values() for per in result.scores.values() for n in per})
    reused = [step for step in ("score heads", *(f"stage {s}" for s in STAGES)) if step not in timings]
    setup = (f"Plan: {plan.summary().splitlines()[1].strip()}; KV {plan.kv_bytes_per_token()} B/token "
             f"(original {plan.full_kv_bytes_per_token()}). Stages: align {cfg.align_steps}, distill "
             f"{cfg.distill_steps}, long {cfg.long_steps} steps at {cfg.long_factor}x native ({native}) length, "
             f"{cfg.batch_size} sequences per step; FA heads {cfg.fa_position}, align head_weight {cfg.head_weight:g}, "
             f"distill mixture {cfg.distill_mixture}, long mixture {cfg.long_mixture}.")
    lines = [f"# HydraHead pipeline on {cfg.teacher}", ""]
    lines += [f"> **Warning.** {text}\n" for text in doubts(evals, native)]
    lines += [setup, "",
              f"Evaluation: {cfg.tasks.replace(',', ', ')} at {', '.join(map(str, lengths))} tokens; "
              f"{_samples_per_cell(evals)}; greedy decoding, seed {cfg.seed}.", "",
              f"Software: {versions_line()}.", ""]
    if wall_s is not None:
        lines += [f"Wall time: {_duration(wall_s)}" + (f" (reused from {cfg.out}: {', '.join(reused)})" if reused else "")
                  + ".", ""]
    lines += ["## The plan", "", "```", plan.summary(), "```", "",
              "![head scores; the heads kept as full attention are boxed](head_scores.png)", ""]
    if stages:
        lines += ["## Training", "", "| stage | steps | sequence length | first loss | final loss |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {s} | {i['steps']} | {i['seq_len']} | {i['first_loss']:.4f} | {i['final_loss']:.4f} |"
                  for s, i in stages.items()]
        lines += ["", "Align's loss is the relative MSE of the attention outputs, distill's KL + cross-entropy "
                  "against the original, long's the next-token cross-entropy (faint: every step; solid: moving "
                  "average).", "", "![loss curves](losses.png)", ""]
    for name, result in evals.items():
        lines += [f"## {name}", "", result.table(), ""]
    lines += ["![accuracy vs length](accuracy_vs_length.png)", ""]
    if any(result.records for result in evals.values()):
        lines += ["## Sample predictions", "", "The first samples at the native and the longest length; every "
                  "prediction is in samples.jsonl.", "", *_predictions(evals, native)]
    lines += ["## Time per step", "", "| step | seconds |", "|---|---:|", *(f"| {k} | {v:.0f} |" for k, v in timings.items()), ""]
    return "\n".join(lines)
