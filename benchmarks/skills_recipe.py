"""Which conversion keeps the teacher's native-length skills (issue 15, point 1)?

Every variant is the teacher's interp 7:1 plan (query granularity; heads scored on STUDY_BEHAVIOURS unless the
variant names others; the all-FA controls have every head FA) trained through the pipeline's three stages (align,
distill, long at 2x native) with one change, then evaluated on a fixed small set:
niah_single_1, niah_multikey_1, niah_multivalue and vt at 1x and 16x the native length (512, 8192) and cwe at
1x, `--limit` samples per cell (greedy, evaluation seed 0). Each cell is printed with a 95% bootstrap
interval over its samples (2000 resamples of the per-sample scores). Each variant's runs and its row are kept
in --out/<variant>, so a stopped run resumes and several copies started side by side share the variants out.
With --rows DIR each finished row is also kept as DIR/<variant>.json and --render / --compare read DIR:
benchmarks/rows/skills keeps the shipped teacher's rows in git (a few kB each), so the tables outlive the run
folders (gigabytes of checkpoints, which a new machine does not have).

A variant whose plan, conversion options and align settings equal another's at the same budget and seed (a different
distill mixture, say) takes a copy of that variant's finished align stage instead of training the same stage
again, and of its distill stage too when the distill settings are the same (another long stage); its folder notes
where each copy came from in ALIGN_SHARED.txt / DISTILL_SHARED.txt.

    OMP_NUM_THREADS=1 python benchmarks/skills_recipe.py --budget quick --only "nope,rope"   # rank hypotheses
    OMP_NUM_THREADS=1 python benchmarks/skills_recipe.py --budget full --only "rope"         # confirm
    python benchmarks/skills_recipe.py --rows benchmarks/rows/skills --render               # the table
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import NamedTuple

import torch

from hydrahead.evaluation import evaluate
from hydrahead.jsonfile import write_json_atomic
from hydrahead.models import load_causal_lm, load_model
from hydrahead.selection import ScoreConfig, Scores, make_plan, score_heads
from hydrahead.transfer.config import GOAL_REACH_SCORE, GOAL_SHARE_OF_TEACHER, SKILLS_CWE_MIXTURE, SKILLS_MIXTURE
from hydrahead.transfer.pipeline import PipelineConfig, check_settings, train_hybrid

TASKS = "niah_single_1,niah_multikey_1,niah_multivalue,vt"
# the behaviours that picked every variant's FA heads unless it says otherwise: the pipeline's default when the
# study began (no_repeat joined it on 2026-12-02, decided by this study's rows); kept so that those rows stay valid
STUDY_BEHAVIOURS = ("retrieval", "multikey", "induction")
# the study's behaviours with no_repeat (the pipeline's default since 2026-12-02, named here so that a later change
# of that default leaves these variants' rows valid)
NO_REPEAT_BEHAVIOURS = (*STUDY_BEHAVIOURS, "no_repeat")
BUDGETS = {"quick": (20, 30, 10), "full": (100, 200, 50), "2x": (200, 400, 100), "4x": (400, 800, 200)}
# the skills mixture with cwe drawn twice as often again (the pipeline's named mixture "skills-cwe"): cwe is the one
# task the mixture with the no_repeat heads left short of the goal at 4x (25.5 against 25.65 needed)
CWE_MIXTURE = SKILLS_CWE_MIXTURE
# the variant the pipeline's defaults train (PipelineConfig), made so by rows/skills-native100/RULE-long-stage-mixture.md
PIPELINE_DEFAULT = "nope_logscale + cwe-weighted mixture in distill and long + no_repeat heads@4x"


class Recipe(NamedTuple):
    options: dict  # conversion options
    settings: dict  # per-stage TransferConfig settings
    behaviours: tuple[str, ...] = STUDY_BEHAVIOURS  # what the head scoring that picks the FA heads asks
    all_fa: bool = False  # every head FA (built as the hybrids' FA heads are): the control without GDN heads


VARIANTS: dict[str, Recipe] = {
    "nope_logscale": Recipe({"fa_position": "nope_logscale"}, {}),
    "rope": Recipe({"fa_position": "rope"}, {}),
    # RoPE up to the native length, one fixed distance beyond (ReRoPE): rope's native skills, NoPE's reach?
    "rope_clamped": Recipe({"fa_position": "rope_clamped"}, {}),
    "nope_logscale + head align": Recipe({"fa_position": "nope_logscale"}, {"align": {"head_weight": 1.0}}),
    "rope + head align": Recipe({"fa_position": "rope"}, {"align": {"head_weight": 1.0}}),
    "rope + skills mixture": Recipe({"fa_position": "rope"}, {"distill": {"mixture": SKILLS_MIXTURE}}),
    # the default recipe with more weight on the skills it recovers last (niah_multivalue, vt, cwe)
    "nope_logscale + skills mixture": Recipe({"fa_position": "nope_logscale"},
                                             {"distill": {"mixture": SKILLS_MIXTURE}}),
    # the FA heads chosen with the no_repeat behaviour beside the pipeline's: the hybrids name a value twice in
    # niah_multivalue, and the teacher's head that keeps them from it (L3 H6) is not among the pipeline's choice
    "nope_logscale + no_repeat heads": Recipe({"fa_position": "nope_logscale"}, {}, NO_REPEAT_BEHAVIOURS),
    # the two that won at the full budget, together
    "nope_logscale + skills mixture + no_repeat heads": Recipe({"fa_position": "nope_logscale"},
                                                              {"distill": {"mixture": SKILLS_MIXTURE}},
                                                              NO_REPEAT_BEHAVIOURS),
    "nope_logscale + cwe-weighted mixture + no_repeat heads": Recipe({"fa_position": "nope_logscale"},
                                                                    {"distill": {"mixture": CWE_MIXTURE}},
                                                                    NO_REPEAT_BEHAVIOURS),
    # the same with the long stage on the cwe-weighted mixture too (not the corpus mixture): after distill both seeds
    # of the cwe-weighted recipe are at the teacher's cwe (29.0, 29.2 on 100 samples), after long at 26.8, 25.0
    "nope_logscale + cwe-weighted mixture in distill and long + no_repeat heads": Recipe(
        {"fa_position": "nope_logscale"}, {"distill": {"mixture": CWE_MIXTURE}, "long": {"mixture": CWE_MIXTURE}},
        NO_REPEAT_BEHAVIOURS),
    # the controls of the recipe's table (recipe_table.py): no GDN head, the same stages and data
    "all FA (NoPE + log-scale) + skills mixture": Recipe({"fa_position": "nope_logscale"},
                                                         {"distill": {"mixture": SKILLS_MIXTURE}}, all_fa=True),
    "all FA (RoPE) + skills mixture": Recipe({"fa_position": "rope"}, {"distill": {"mixture": SKILLS_MIXTURE}},
                                             all_fa=True),
}


def bootstrap(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile bootstrap interval, in points (0-100)."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(resamples))
    return 100 * sum(values) / n, 100 * means[int(0.025 * resamples)], 100 * means[int(0.975 * resamples) - 1]


def cells(records: list[dict]) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for r in records:
        out.setdefault(r["task"], {}).setdefault(str(r["length"]), []).append(r["score"])
    return out


def slug(name: str) -> str:
    return name.replace(" + ", "+").replace(" ", "_")


def measure(model, tokenizer, native: int, limit: int, factors: tuple[int, ...] = (1, 16)) -> list[dict]:
    """Per-sample scores of TASKS at these multiples of the native length and of cwe at the native length."""
    records = []
    for tasks, lengths in ((TASKS, [f * native for f in factors]), ("cwe", [native])):
        result = evaluate(model, tokenizer, tasks, lengths, limit, 0, progress=False)
        records += [{"task": r["task"], "length": r["length"], "score": r["score"]} for r in result.records]
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="models/hydrahead-teacher-3m")
    ap.add_argument("--out", default="runs/skills")
    ap.add_argument("--rows", help="also keep each finished row as ROWS/<variant>.json; --render and --compare read "
                                   "ROWS (default: the rows inside --out)")
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="quick", help="align/distill/long steps")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--limit", type=int, default=20, help="samples per task and length")
    ap.add_argument("--factors", default="1,16", help="multiples of the native length at which the four TASKS are "
                                                     "measured (cwe: the native length only)")
    ap.add_argument("--remeasure", action="store_true", help="train nothing: measure the --only variants' finished "
                                                             "models (and the teacher, as 'original') again with "
                                                             "--limit and --factors, into --rows")
    ap.add_argument("--reach_rows", metavar="DIR", help="--goal: rows whose niah_single_1 @8192 cells stand in for "
                                                        "the recipe's, when --rows were measured at 512 only")
    ap.add_argument("--only", help="comma-separated variant names (exact); 'original' evaluates the teacher")
    ap.add_argument("--render", action="store_true", help="train nothing: tabulate the rows measured so far")
    ap.add_argument("--goal", metavar="NAME[@BUDGET]", help="train nothing: one recipe (pooled over its seeds) "
                                                            "against issue 15's goal, task by task")
    ap.add_argument("--compare", metavar="A,B", help="train nothing: A against B per task and length, paired over "
                                                       "the same samples and pooled over the seeds both have; a side "
                                                       "is a variant at --budget, or NAME@BUDGET")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_dir = Path(args.rows) if args.rows else None
    if args.render:
        print(render(load_rows(out, rows_dir)))
        return
    if args.goal:
        reach = load_rows(out, Path(args.reach_rows)) if args.reach_rows else None
        print(goal(load_rows(out, rows_dir), args.goal, args.budget, reach))
        return
    if args.compare:
        print(compare(load_rows(out, rows_dir), *[name.strip() for name in args.compare.split(",")],
                      budget=args.budget))
        return
    factors = parse_factors(args.factors)
    names = [n.strip() for n in args.only.split(",")] if args.only else ["original", *VARIANTS]
    for name in names:
        if name != "original" and name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; variants: original, {', '.join(VARIANTS)}")
    if args.remeasure:
        if rows_dir is None or not args.only:
            raise SystemExit("--remeasure needs --rows (where the new rows go) and --only (which models)")
        missing = [n for n in names if n != "original"
                   and not (out / run_tag(n, args.budget, args.seed) / "long" / "model" / "config.json").exists()]
        if missing:
            raise SystemExit(f"--remeasure: no finished model for {', '.join(missing)} at --budget {args.budget} "
                             f"--seed {args.seed} in {out} (train it first)")
    teacher, tokenizer = load_causal_lm(args.teacher)
    native = int(teacher.config.max_position_embeddings)
    if args.remeasure:
        remeasure(names, out, rows_dir, teacher, tokenizer, native, args, factors)
        return
    for name in names:
        tag = "original" if name == "original" else run_tag(name, args.budget, args.seed)
        folder = out / tag
        kept = rows_dir / f"{tag}.json" if rows_dir else None
        if kept and kept.exists():
            teacher_of = json.loads(kept.read_text()).get("teacher")
            if teacher_of not in (None, args.teacher):
                raise SystemExit(f"{kept} was measured on {teacher_of}, not {args.teacher}: use another --rows")
            continue
        if (folder / "row.json").exists():
            if kept:
                write_json_atomic(kept, json.loads((folder / "row.json").read_text()))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if name != "original":
            # a variant redefined since its folder was made would resume the old one's stages: refused instead
            check_settings(folder, {"recipe": VARIANTS[name]._asdict(), "steps": BUDGETS[args.budget],
                                    "seed": args.seed, "teacher": args.teacher}, "--out", "recipe.json")
            share_stages(out, name, args.budget, args.seed)
        start, load = time.perf_counter(), os.getloadavg()[0]
        if name == "original":
            model = teacher
        else:
            recipe = VARIANTS[name]
            options, stage_settings = recipe.options, recipe.settings
            plan = (all_fa_plan(out, teacher.config) if recipe.all_fa
                    else interp_plan(out, teacher, tokenizer, args.teacher, native, recipe.behaviours))
            align, distill, long = BUDGETS[args.budget]
            # the corpus mixture unless the variant says otherwise, whatever the pipeline's default becomes
            run_cfg = PipelineConfig(teacher=args.teacher, out=str(folder), seed=args.seed, align_steps=align,
                                     distill_steps=distill, long_steps=long, distill_mixture="corpus",
                                     long_mixture="corpus")
            model = load_model(train_hybrid(run_cfg, plan, folder, native, options, progress=False,
                                            stage_settings=stage_settings))
        trained = time.perf_counter() - start
        records = measure(model, tokenizer, native, args.limit, factors)
        row = measured_row(name, args, records, trained, start, load)
        write_json_atomic(folder / "row.json", row)
        if kept:
            write_json_atomic(kept, row)
        print(f"{tag}: {row['total_minutes']} min; " + render_row(row, native), flush=True)
    print(render(load_rows(out, rows_dir)))


def measured_row(name: str, args, records: list[dict], trained: float, start: float, load: float, **extra) -> dict:
    """A row as kept: the variant, its budget and seed, its per-sample records, and how long it took at what load.
    The thread count is kept because two trainings of one variant and seed have not always been bit-identical
    (the 2026-12-03 retrainings differ from the first in 21 and 28 of 180 samples) and it is a suspect."""
    return {"variant": name, "teacher": args.teacher, "budget": args.budget, "seed": args.seed, "limit": args.limit,
            **extra, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "train_minutes": round(trained / 60, 1),
            "total_minutes": round((time.perf_counter() - start) / 60, 1), "load_at_start": round(load, 2),
            "load_at_end": round(os.getloadavg()[0], 2), "records": records}


def parse_factors(spec: str) -> tuple[int, ...]:
    try:
        factors = tuple(int(f) for f in spec.split(","))
    except ValueError:
        raise SystemExit(f"--factors: comma-separated whole multiples of the native length, got {spec!r}") from None
    if not factors or min(factors) < 1:
        raise SystemExit(f"--factors: each multiple must be at least 1, got {spec!r}")
    return factors


def remeasure(names: list[str], out: Path, rows_dir: Path, teacher, tokenizer, native: int, args,
              factors: tuple[int, ...]) -> None:
    """Each named model (the teacher for 'original') measured again, its row kept as ROWS/<tag>.json; a row already
    there is kept. The training minutes of a remeasured row are 0: it trained nothing."""
    for name in names:
        tag = "original" if name == "original" else run_tag(name, args.budget, args.seed)
        kept = rows_dir / f"{tag}.json"
        if kept.exists():
            continue
        start, load = time.perf_counter(), os.getloadavg()[0]
        model = teacher if name == "original" else load_model(out / tag / "long" / "model")
        records = measure(model, tokenizer, native, args.limit, factors)
        row = measured_row(name, args, records, 0.0, start, load, factors=list(factors), remeasured=True)
        write_json_atomic(kept, row)
        print(f"{tag}: {row['total_minutes']} min; " + render_row(row, native), flush=True)
    print(render(load_rows(out, rows_dir)))


def interp_plan(out: Path, teacher, tokenizer, teacher_path: str, native: int, behaviours: tuple[str, ...]) -> Path:
    """The teacher's interp 7:1 plan (query granularity) from a full scoring (8 pairs) of `behaviours`, both kept
    in `out` (scores.json and plan.json for the pipeline's behaviours), made once."""
    suffix = "" if behaviours == STUDY_BEHAVIOURS else "-" + "+".join(behaviours)
    scores_path, plan_path = out / f"scores{suffix}.json", out / f"plan{suffix}.json"
    if not scores_path.exists():
        config = ScoreConfig(behaviours=list(behaviours), length=native, num_pairs=8, seed=0)
        score_heads(teacher, tokenizer, config, teacher_path).save(scores_path)
    if not plan_path.exists():
        scores = Scores.load(scores_path)
        make_plan(scores.shape, "interp", "7:1", "query", scores=scores).save(plan_path)
    return plan_path


def all_fa_plan(out: Path, config) -> Path:
    """Every head of every layer FA, kept in `out` as plan-all_fa.json."""
    from hydrahead.plan import HeadPlan

    path = out / "plan-all_fa.json"
    if not path.exists():
        HeadPlan.full_attention(config).save(path)
    return path


def run_tag(name: str, budget: str, seed: int) -> str:
    return f"{slug(name)}__{budget}__s{seed}"


def share_stages(out: Path, name: str, budget: str, seed: int) -> Path | None:
    """Copy the finished stages of another variant trained the same way up to their end (the same conversion options,
    plan, budget and seed, and the same settings for each copied stage) into this variant's new run: align and
    distill when both match, else align alone. Returns the source run, if any. The long stage is never copied (two
    variants alike up to its end are one variant); each copied stage is noted in <STAGE>_SHARED.txt."""
    import shutil

    folder = out / run_tag(name, budget, seed)
    if (folder / "align").exists():
        return None  # trained (or being trained) here
    ours = VARIANTS[name]
    source, stages = None, []
    for other, theirs in VARIANTS.items():
        run = out / run_tag(other, budget, seed)
        if other == name or (theirs.options, theirs.behaviours, theirs.all_fa) != (ours.options, ours.behaviours,
                                                                                   ours.all_fa):
            continue
        alike = []
        for stage in ("align", "distill"):
            if (theirs.settings.get(stage) != ours.settings.get(stage)
                    or not (run / stage / "model" / "config.json").exists()):
                break
            alike.append(stage)
        if len(alike) > len(stages):
            source, stages = run, alike
    for stage in stages:  # align first: a distill copied without its align would be trained on another's
        shutil.rmtree(folder / f"{stage}.partial", ignore_errors=True)  # left by a copy that was killed
        shutil.copytree(source / stage, folder / f"{stage}.partial")
        (folder / f"{stage}.partial").rename(folder / stage)  # whole or not at all
        (folder / f"{stage.upper()}_SHARED.txt").write_text(f"{stage} stage copied from {source / stage}\n")
    return source


def load_rows(out: Path, rows_dir: Path | None) -> list[dict]:
    """The measured rows: ROWS/*.json if --rows is given, else the rows inside the run folders."""
    paths = sorted(rows_dir.glob("*.json")) if rows_dir else sorted(out.glob("*/row.json"))
    return [json.loads(p.read_text()) for p in paths]


def render_row(row: dict, native: int) -> str:
    parts = []
    for task, per in cells(row["records"]).items():
        for length, values in per.items():
            mean, lo, hi = bootstrap(values)
            parts.append(f"{task}@{length} {mean:.0f} [{lo:.0f}, {hi:.0f}]")
    return "; ".join(parts)


COLUMNS = [("niah_single_1", "512"), ("niah_multikey_1", "512"), ("niah_multivalue", "512"), ("vt", "512"),
           ("cwe", "512"), ("niah_single_1", "8192"), ("niah_multikey_1", "8192"), ("niah_multivalue", "8192"),
           ("vt", "8192")]


def compare(rows: list[dict], a: str, b: str, budget: str) -> str:
    """A - B per column and over the columns at each length: the paired bootstrap of per-sample differences
    (`hydrahead.intervals`), each seed's cell paired with the other variant's cell of the same seed. A side is
    a variant's name at `budget`, or NAME@BUDGET (one recipe at two budgets: "nope_logscale@2x,nope_logscale@full")."""
    from hydrahead.intervals import paired_comparison

    sides = {side: parse_side(side, budget, "--compare") for side in (a, b)}
    if len(sides) < 2:
        raise SystemExit(f"--compare needs two different sides, got {a!r} twice")
    seeds = {side: {r["seed"]: cells(r["records"]) for r in rows if (r["variant"], r["budget"]) == key}
             for side, key in sides.items()}
    common = sorted(set(seeds[a]) & set(seeds[b]))
    if not common:
        raise SystemExit(f"no seed has both {a!r} and {b!r} (default budget {budget!r}) among the rows")
    at = budget if "@" not in a + b else "as named"
    lines = [f"{a} - {b}, budget {at}, seeds {common} (paired bootstrap over samples, 95%; 'beats' rule)",
             "| columns | " + a + " | " + b + " | difference [95%] | A beats B |", "|---|---:|---:|---:|---|"]
    # the columns every seed of both sides has (the 100-sample rows read 512 only)
    present = [(t, n) for t, n in COLUMNS if all(n in seeds[side][s].get(t, {}) for side in (a, b) for s in common)]
    groups = [[c] for c in present] + [g for n in ("512", "8192") if (g := [c for c in present if c[1] == n])]
    for group in groups:
        cells_a = [[100 * v for v in seeds[a][s][t][n]] for t, n in group for s in common]  # points, 0-100
        cells_b = [[100 * v for v in seeds[b][s][t][n]] for t, n in group for s in common]
        c = paired_comparison(cells_a, cells_b, "beats")
        name = f"{group[0][0]} @{group[0][1]}" if len(group) == 1 else f"mean of {len(group)} tasks @{group[0][1]}"
        lines.append(f"| {name} | {c.a:.1f} | {c.b:.1f} | {c.diff:+.1f} [{c.lo:+.1f}, {c.hi:+.1f}] | {c.verdict} |")
    return "\n".join(lines)


def parse_side(side: str, budget: str, flag: str) -> tuple[str, str]:
    """NAME@BUDGET (or NAME, at `budget`) -> (variant, budget)."""
    name, _, at = side.partition("@")
    if at and at not in BUDGETS:
        raise SystemExit(f"{flag}: unknown budget {at!r} in {side!r}; budgets: {', '.join(BUDGETS)}")
    return name, at or budget


def share_verdict(ours: float, teacher: float) -> tuple[str, bool]:
    """Issue 15's goal at the native length: the recipe's mean (points) against the teacher's."""
    return (f"{100 * ours / teacher:.0f}%" if teacher else "-"), ours >= GOAL_SHARE_OF_TEACHER / 100 * teacher


def reach_verdict(seed_groups: list[list[float]]) -> tuple[str, bool]:
    """Issue 15's goal at 16x (niah_single_1): every training seed's mean (points) on its own."""
    from hydrahead.intervals import mean_of_groups

    means = [mean_of_groups([g]) for g in seed_groups]
    return "seeds: " + ", ".join(f"{m:.0f}" for m in means), all(m >= GOAL_REACH_SCORE for m in means)


def goal(rows: list[dict], side: str, budget: str, reach: list[dict] | None = None) -> str:
    """Issue 15's goal for one recipe, task by task: its mean at 512 pooled over its seeds (each seed's cell
    resampled on its own) as a share of the teacher's on the same samples, and niah_single_1 at 8192 seed by seed
    (from `reach`, rows of the same recipe and seeds, where `rows` were measured at 512 only)."""
    from hydrahead.intervals import mean_of_groups, stratified_bootstrap

    name, at = parse_side(side, budget, "--goal")
    runs = sorted((r for r in rows if (r["variant"], r["budget"]) == (name, at)), key=lambda r: r["seed"])
    teacher = next((r for r in rows if r["variant"] == "original"), None)
    if not runs or teacher is None:
        raise SystemExit(f"--goal needs the 'original' row and at least one {name}@{at} row among the rows")
    rng = random.Random(0)
    per_seed = [cells(r["records"]) for r in runs]
    if reach is not None:
        # niah_single_1 @8192 of the same recipe and seeds, from the rows measured at every length
        far = {r["seed"]: cells(r["records"]) for r in reach if (r["variant"], r["budget"]) == (name, at)}
        lacking = [r["seed"] for r in runs if "8192" not in far.get(r["seed"], {}).get("niah_single_1", {})]
        if lacking:
            raise SystemExit(f"--reach_rows: no niah_single_1 @8192 for {name}@{at} seed(s) {lacking}")
        for r, seed_cells in zip(runs, per_seed):
            seed_cells.setdefault("niah_single_1", {})["8192"] = far[r["seed"]]["niah_single_1"]["8192"]
    short = [r["seed"] for r, c in zip(runs, per_seed) if "8192" not in c.get("niah_single_1", {})]
    if short:
        raise SystemExit(f"--goal: the rows of {name}@{at} seed(s) {short} have no niah_single_1 @8192 (measured "
                         "at 512 only?): give --reach_rows, the rows measured at every length")
    lines = [f"{name}@{at}, seeds {[r['seed'] for r in runs]}, against the teacher: the goal is "
             f"{GOAL_SHARE_OF_TEACHER:g}% of its score at 512 on every task (pooled over the seeds, 95% bootstrap "
             f"over samples) and niah_single_1 >= {GOAL_REACH_SCORE:g} at 8192 for every seed",
             "| task | length | teacher | recipe [95%] | recipe / teacher | goal |", "|---|---:|---:|---:|---:|---|"]
    verdicts = []
    for task, length in COLUMNS:
        if length != "512" and task != "niah_single_1":
            continue  # only niah_single_1 carries a goal past the native length
        groups = [[100 * v for v in seed[task][length]] for seed in per_seed]
        ours = mean_of_groups(groups)
        lo, hi = stratified_bootstrap(groups, rng)
        if length == "512":
            theirs = mean_of_groups([[100 * v for v in cells(teacher["records"])[task][length]]])
            share, met = share_verdict(ours, theirs)
        else:
            theirs, (share, met) = None, reach_verdict(groups)
        verdicts.append(met)
        lines.append(f"| {task} | {length} | {'-' if theirs is None else f'{theirs:.1f}'} | {ours:.1f} "
                     f"[{lo:.1f}, {hi:.1f}] | {share} | {'met' if met else 'not met'} |")
    lines.append(f"goal {'met' if all(verdicts) else 'not met'}: {sum(verdicts)} of {len(verdicts)} rows")
    return "\n".join(lines)


def render(rows: list[dict]) -> str:
    order = {"original": 0, **{name: i + 1 for i, name in enumerate(VARIANTS)}}
    rows.sort(key=lambda r: (r["variant"] != "original", list(BUDGETS).index(r["budget"]),
                             order.get(r["variant"], len(order)), r["seed"]))  # a retired variant's rows go last
    columns = COLUMNS
    head = "| variant | budget | seed | " + " | ".join(f"{t} @{n}" for t, n in columns) + " | train min (load) |"
    lines = [head, "|---|---|---:|" + "---:|" * (len(columns) + 1)]
    for row in rows:
        per = cells(row["records"])
        text = []
        for task, length in columns:
            values = per.get(task, {}).get(length)
            if not values:
                text.append("-")
                continue
            mean, lo, hi = bootstrap(values)
            text.append(f"{mean:.0f} [{lo:.0f}-{hi:.0f}]")
        budget = "-" if row["variant"] == "original" else row["budget"]
        lines.append(f"| {row['variant']} | {budget} | {row['seed']} | " + " | ".join(text)
                     + f" | {row['train_minutes']} ({row['load_at_start']}-{row['load_at_end']}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
