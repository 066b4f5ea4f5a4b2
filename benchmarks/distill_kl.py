"""Is the distill stage short of steps or of learning rate (issue 15)? Its KL to the teacher, run by run.

Every stage logs one row per optimizer step (`<run>/<stage>/training/log.jsonl`: loss, kl, ce, lr, ...). This
prints, per run, the KL averaged over the `--window` steps that end at each step of `--at` (with its standard
deviation over those steps, the step-to-step noise) and the learning rate at that step, so runs of different
budgets can be read at the same step: the budgets' cosine schedules put very different learning rates there. With
`--plot` it draws the windowed KL against the step for every run.

    python benchmarks/distill_kl.py --out /work/longruns/skills \\
        --runs nope_logscale__full__s0,nope_logscale__full__s1,nope_logscale__2x__s0,nope_logscale__4x__s0
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from hydrahead.plots import read_log


def log_rows(run: Path, stage: str) -> dict[int, dict]:
    """The stage's logged rows by step."""
    path = run / stage / "training" / "log.jsonl"
    if not path.exists():
        raise SystemExit(f"{run.name}: no {stage} log at {path} (has the stage started?)")
    rows = {r["step"]: r for r in read_log(path) if "kl" in r}
    if not rows:
        raise SystemExit(f"{run.name}: {path} has no 'kl' column (only the distill and long stages log one)")
    return rows


def window(rows: dict[int, dict], end: int, size: int) -> dict | None:
    """Mean and standard deviation of the KL over the steps (end - size, end], the learning rate at `end`;
    None when the run has not logged every step of the window."""
    steps = range(end - size + 1, end + 1)
    if end - size < 0 or any(s not in rows for s in steps):
        return None
    values = [rows[s]["kl"] for s in steps]
    return {"kl": statistics.fmean(values), "sd": statistics.stdev(values) if size > 1 else 0.0,
            "lr": rows[end]["lr"]}


def table(runs: dict[str, dict[int, dict]], at: list[int], size: int) -> str:
    head = "| run | steps | " + " | ".join(f"KL, steps {s - size + 1}-{s} (lr at {s})" for s in at) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(at)]
    for name, rows in runs.items():
        cells = []
        for s in at:
            w = window(rows, s, size)
            cells.append("-" if w is None else f"{w['kl']:.3f} ±{w['sd']:.3f} ({w['lr']:.1e})")
        lines.append(f"| {name} | {max(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: dict[str, dict[int, dict]], size: int, stage: str, path: Path) -> None:
    from hydrahead.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, rows in runs.items():
        points = [(step, w["kl"]) for step in sorted(rows) if (w := window(rows, step, size)) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
    ax.set_xlabel(f"{stage} step")
    ax.set_ylabel(f"KL to the teacher ({size}-step mean)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/skills", help="the folder holding the runs (skills_recipe.py's --out)")
    ap.add_argument("--runs", required=True, help="comma-separated run folders under --out")
    ap.add_argument("--stage", default="distill", choices=("distill", "long"))
    ap.add_argument("--at", default="20,100,200,400,800", help="comma-separated steps each window ends at")
    ap.add_argument("--window", type=int, default=20, help="steps per window (default: 20)")
    ap.add_argument("--plot", help="write the windowed KL against the step here (PNG)")
    args = ap.parse_args()
    try:
        at = sorted({int(s) for s in args.at.split(",")})
    except ValueError:
        raise SystemExit(f"--at: comma-separated whole steps, got {args.at!r}") from None
    if args.window < 1 or at[0] < args.window:
        raise SystemExit(f"--window must be at least 1 and no larger than the first --at step ({at[0]})")
    out = Path(args.out)
    runs = {name.strip(): log_rows(out / name.strip(), args.stage) for name in args.runs.split(",")}
    print(table(runs, at, args.window))
    if args.plot:
        plot(runs, args.window, args.stage, Path(args.plot))
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
