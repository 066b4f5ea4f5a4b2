"""Score against training steps (issue 15): a skills_recipe run evaluated after each stage, on the recipe's set.

A skills_recipe variant's run (`skills_recipe.py --out DIR`) keeps the hybrid at the end of every stage: align,
distill and long. This scores the converted hybrid before any training (step 0: the teacher converted with the
run's plan and options, as the align stage does), align/model and distill/model on the same set and samples as the
run's row (long/model's scores are the row itself), keeps them in DIR/<run>/curve.json (a stopped run resumes),
prints a table with 95% bootstrap intervals and plots, per run, the mean over the five tasks at the native length
and niah_single_1 at 16x against cumulative training steps, beside the teacher's (DIR/original/row.json, if there).

    OMP_NUM_THREADS=1 python benchmarks/skills_curve.py --out runs/skills \\
        --runs nope_logscale__full__s0,rope_clamped__full__s0 --plot docs/skills_curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from skills_recipe import bootstrap, cells, measure

from hydrahead.attention import HybridOptions
from hydrahead.convert import convert
from hydrahead.jsonfile import write_json_atomic
from hydrahead.models import load_causal_lm, load_model
from hydrahead.plan import HeadPlan

STAGES = ("align", "distill", "long")


def stage_summary(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "summary.json").read_text())


def converted(run: Path, teacher):
    """The hybrid before training, as the align stage builds it (its plan and options); `teacher` stays untouched."""
    config = stage_summary(run, "align")["config"]
    options = {"logscale_length": int(teacher.config.max_position_embeddings), **config["options"]}
    return convert(teacher, HeadPlan.load(config["plan"]), HybridOptions(**options))


def curve(run: Path, teacher, tokenizer, native: int) -> list[dict]:
    """[{steps, stage, records}] from step 0 to the end of the long stage; measured points are kept on disk."""
    path = run / "curve.json"
    points = json.loads(path.read_text()) if path.exists() else []
    row = json.loads((run / "row.json").read_text())
    limit = row["limit"]
    done = {p["stage"] for p in points}
    steps = 0
    plan = [("converted", 0)]
    for stage in STAGES:
        steps += stage_summary(run, stage)["steps"]
        plan.append((stage, steps))
    for stage, at in plan:
        if stage in done:
            continue
        if stage == "long":
            records = row["records"]
        else:
            model = converted(run, teacher) if stage == "converted" else load_model(run / stage / "model")
            records = measure(model, tokenizer, native, limit)
        points.append({"stage": stage, "steps": at, "records": records})
        write_json_atomic(path, points)
        print(f"{run.name} {stage} (step {at}): done", flush=True)
    order = [s for s, _ in plan]
    return sorted(points, key=lambda p: order.index(p["stage"]))


def summary(records: list[dict], native: int) -> dict[str, tuple[float, float, float]]:
    """The two curves' points: mean over the tasks at the native length (per-sample mean of the five tasks' scores,
    bootstrapped over samples) and niah_single_1 at 16x."""
    per = cells(records)
    tasks = sorted(t for t in per if str(native) in per[t])
    columns = list(zip(*(per[t][str(native)] for t in tasks)))  # one tuple of task scores per sample index
    native_mean = bootstrap([sum(c) / len(c) for c in columns])
    far = bootstrap(per["niah_single_1"][str(16 * native)])
    return {"native": native_mean, "far": far}


def plot(curves: dict[str, list[dict]], teacher: dict | None, native: int, path: Path) -> None:
    from hydrahead.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    panels = (("native", f"mean of 5 tasks at {native} (1x)"), ("far", f"niah_single_1 at {16 * native} (16x)"))
    for ax, (key, title) in zip(axes, panels):
        for name, points in curves.items():
            xs = [p["steps"] for p in points]
            stats = [summary(p["records"], native)[key] for p in points]
            ys = [s[0] for s in stats]
            ax.plot(xs, ys, marker="o", label=name)
            ax.fill_between(xs, [s[1] for s in stats], [s[2] for s in stats], alpha=0.15)
        if teacher is not None:
            ax.axhline(summary(teacher["records"], native)[key][0], color="black", linestyle="--", linewidth=1,
                       label="teacher")
        ax.set_title(title)
        ax.set_xlabel("training steps (align, then distill, then long)")
        ax.set_ylabel("score (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    # below both panels: a legend inside an axis hides the curves near the teacher's line
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="models/hydrahead-teacher-3m")
    ap.add_argument("--out", default="runs/skills", help="skills_recipe.py's --out")
    ap.add_argument("--runs", required=True, help="comma-separated run folders under --out (e.g. rope__full__s0)")
    ap.add_argument("--plot", help="write the plot here (PNG)")
    args = ap.parse_args()
    out = Path(args.out)
    runs = [out / name.strip() for name in args.runs.split(",")]
    missing = [str(r) for r in runs if not (r / "row.json").exists()]
    if missing:
        raise SystemExit(f"no finished skills_recipe run in {', '.join(missing)} (row.json missing)")
    teacher, tokenizer = load_causal_lm(args.teacher)
    native = int(teacher.config.max_position_embeddings)
    curves = {run.name: curve(run, teacher, tokenizer, native) for run in runs}
    original = out / "original" / "row.json"
    teacher_row = json.loads(original.read_text()) if original.exists() else None
    print(f"| run | stage | steps | mean of 5 tasks @{native} | niah_single_1 @{16 * native} |")
    print("|---|---|---:|---:|---:|")
    points = [(name, p["stage"], p["steps"], p["records"]) for name, pts in curves.items() for p in pts]
    if teacher_row:  # the dashed line of the plot
        points.append(("teacher", "-", "-", teacher_row["records"]))
    for name, stage, steps, records in points:
        cell = {k: f"{v[0]:.1f} [{v[1]:.1f}-{v[2]:.1f}]" for k, v in summary(records, native).items()}
        print(f"| {name} | {stage} | {steps} | {cell['native']} | {cell['far']} |")
    if args.plot:
        plot(curves, teacher_row, native, Path(args.plot))
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
