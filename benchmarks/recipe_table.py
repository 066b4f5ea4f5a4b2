"""The recipe's table (issue 15): every task at 1x-16x the native length, the recipe against the teacher and the
controls trained alike, with issue 15's goal beside it.

The recipe and the controls are skills_recipe.py variants, trained there (`skills_recipe.py --budget B --seed S
--only NAME --out DIR`); this evaluates each run's final hybrid (DIR/<run>/long/model) and the teacher on
niah_single_1, niah_multikey_1, niah_multivalue and vt at every length and cwe at the native length, `--limit`
samples per cell (greedy, evaluation seed 0: at 1x and 16x the same samples as the skills rows), and keeps each
model's scores as ROWS/<run>.json with the model's digest (a retrained run is refused, not mixed in). Each column
pools its training seeds (every seed's cell resampled on its own: 95% stratified bootstrap over samples).

    OMP_NUM_THREADS=1 python benchmarks/recipe_table.py --out /work/longruns/skills \\
        --recipe "nope_logscale + cwe-weighted mixture in distill and long + no_repeat heads@4x" \\
        --controls "all FA (RoPE) + skills mixture@4x" --seeds 0,1 --plot docs/recipe_table.png
    python benchmarks/recipe_table.py --render ...   # the same table from the rows, evaluating nothing
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from skills_recipe import (PIPELINE_DEFAULT, TASKS, VARIANTS, cells, measure, parse_side, reach_verdict, run_tag,
                           share_verdict)

from hydrahead.intervals import mean_of_groups, stratified_bootstrap
from hydrahead.jsonfile import write_json_atomic
from hydrahead.resume import model_digest
from hydrahead.transfer.config import GOAL_REACH_SCORE, GOAL_SHARE_OF_TEACHER

FACTORS = (1, 2, 4, 8, 16)


def runs_of(side: str, seeds: list[int]) -> list[str]:
    name, budget = parse_side(side, "full", "--recipe/--controls")
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; variants: {', '.join(VARIANTS)}")
    return [run_tag(name, budget, seed) for seed in seeds]


def evaluate_run(tag: str, model_dir: Path, rows: Path, teacher: str, limit: int, loaded) -> str:
    """ROWS/<tag>.json for the model in model_dir, unless kept already; returns what was done."""
    path = rows / f"{tag}.json"
    digest = model_digest(model_dir)
    if path.exists():
        kept = json.loads(path.read_text())
        if digest is not None and kept["model_digest"] != digest:
            raise SystemExit(f"{path} was measured on another model than {model_dir} (retrained?): delete the row "
                             "to measure the model there now")
        return "kept"
    if digest is None:
        return f"missing: no model in {model_dir} (train it with skills_recipe.py first)"
    from hydrahead.models import load_model

    original, tokenizer = loaded
    model = original if tag == "original" else load_model(model_dir)
    native = int(original.config.max_position_embeddings)
    records = measure(model, tokenizer, native, limit, FACTORS)
    write_json_atomic(path, {"run": tag, "teacher": teacher, "native": native, "limit": limit,
                             "factors": list(FACTORS), "model_digest": digest, "records": records})
    return "measured"


def columns(rows: Path, recipe: str, controls: list[str], seeds: list[int]) -> list[tuple[str, list[dict]]]:
    """(heading, per-seed cells) for the teacher, the recipe and each control, from the rows there."""
    out = []
    for heading, tags in [("teacher", ["original"]), (f"recipe: {recipe}", runs_of(recipe, seeds)),
                          *[(f"control: {c}", runs_of(c, seeds)) for c in controls]]:
        found = [cells(json.loads((rows / f"{t}.json").read_text())["records"]) for t in tags
                 if (rows / f"{t}.json").exists()]
        if found:
            out.append((f"{heading} ({len(found)} seed{'s' * (len(found) > 1)})" if heading != "teacher" else heading,
                        found))
    return out


def render(cols: list[tuple[str, list[dict]]], native: int) -> tuple[str, dict]:
    """The markdown table, and per column the mean of the four tasks at each length with its interval (the plot)."""
    if len(cols) < 2 or cols[0][0] != "teacher" or not cols[1][0].startswith("recipe"):
        raise SystemExit("the table needs the teacher's row and at least one of the recipe's")
    rng = random.Random(0)
    lengths = [str(native * f) for f in FACTORS]
    lines = [f"Every cell: mean score, 95% interval over samples (seeds pooled). Goal: the recipe at "
             f"{GOAL_SHARE_OF_TEACHER:g}% of the teacher at {native} on every task, niah_single_1 >= "
             f"{GOAL_REACH_SCORE:g} at {lengths[-1]} for every seed.", "",
             "| task | length | " + " | ".join(h for h, _ in cols) + " | recipe / teacher | goal |",
             "|---|---:|" + "---:|" * len(cols) + "---:|---|"]
    cells_of = [(t, n) for t in TASKS.split(",") for n in lengths] + [("cwe", lengths[0])]
    curves = {h: [] for h, _ in cols}
    for group in [[c] for c in cells_of] + [[(t, n) for t in TASKS.split(",")] for n in lengths]:
        texts, means = [], []
        for heading, seeds in cols:
            # a group's samples: each task's cell of each seed a stratum of its own (the mean over tasks is a
            # mean over equally many samples per task)
            strata = [[100 * v for v in seed[t][n]] for t, n in group for seed in seeds]
            mean, (lo, hi) = mean_of_groups(strata), stratified_bootstrap(strata, rng)
            texts.append(f"{mean:.1f} [{lo:.1f}, {hi:.1f}]")
            means.append(mean)
            if len(group) > 1:
                curves[heading].append((mean, lo, hi))
        task, n = group[0]
        name = task if len(group) == 1 else f"**mean of {len(group)}**"
        share, met = "", None
        if len(group) == 1 and n == lengths[0]:
            share, met = share_verdict(means[1], means[0])
        elif len(group) == 1 and (task, n) == ("niah_single_1", lengths[-1]):
            share, met = reach_verdict([[100 * v for v in seed[task][n]] for seed in cols[1][1]])
        verdict = "" if met is None else "met" if met else "not met"
        lines.append(f"| {name} | {n} | " + " | ".join(texts) + f" | {share} | {verdict} |")
    return "\n".join(lines), curves


def plot(curves: dict, native: int, path: Path) -> Path:
    from hydrahead.plots import _pyplot, _save, length_axis

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    lengths = [native * f for f in FACTORS]
    for heading, points in curves.items():
        mean = [p[0] for p in points]
        ax.plot(lengths, mean, marker="o", label=heading)
        ax.fill_between(lengths, [p[1] for p in points], [p[2] for p in points], alpha=0.15)
    length_axis(ax, lengths, native)
    ax.set_ylabel(f"mean of {len(TASKS.split(','))} tasks (score)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below the axes: no curve is hidden
    return _save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="models/hydrahead-teacher-3m")
    ap.add_argument("--out", default="runs/skills", help="skills_recipe.py's run folders")
    ap.add_argument("--rows", default="benchmarks/rows/recipe", help="each model's scores, one JSON per run (git)")
    ap.add_argument("--recipe", default=PIPELINE_DEFAULT,
                    help="NAME@BUDGET (default: the variant the pipeline's defaults train)")
    ap.add_argument("--controls", default="all FA (RoPE) + skills mixture@4x",
                    help="comma-separated NAME@BUDGET, trained alike without GDN heads ('' for none)")
    ap.add_argument("--seeds", default="0,1", help="training seeds of the recipe and the controls")
    ap.add_argument("--limit", type=int, default=20, help="samples per task and length")
    ap.add_argument("--render", action="store_true", help="evaluate nothing: the table from the rows kept")
    ap.add_argument("--plot", help="a PNG: the mean of the four tasks against the length, per column")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    controls = [c.strip() for c in args.controls.split(",") if c.strip()]
    tags = ["original"] + [t for side in [args.recipe, *controls] for t in runs_of(side, seeds)]  # names checked
    rows, out = Path(args.rows), Path(args.out)
    if args.limit < 2:
        raise SystemExit(f"--limit must be at least 2 (a bootstrap over one sample is no interval), got {args.limit}")
    if not args.render:
        from hydrahead.models import load_causal_lm

        rows.mkdir(parents=True, exist_ok=True)
        loaded = load_causal_lm(args.teacher)
        for tag in tags:
            model_dir = Path(args.teacher) if tag == "original" else out / tag / "long" / "model"
            print(f"{tag}: {evaluate_run(tag, model_dir, rows, args.teacher, args.limit, loaded)}", flush=True)
    if not (rows / "original.json").exists():
        raise SystemExit(f"no teacher's row in {rows}: run without --render first")
    native = json.loads((rows / "original.json").read_text())["native"]
    text, curves = render(columns(rows, args.recipe, controls, seeds), native)
    print(text)
    if args.plot:
        print(f"plot: {plot(curves, native, Path(args.plot))}")


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
