"""Quality of sparse decoding on the shipped teacher: learned roles vs score-derived vs random, same budget.

niah_single_1, niah_multikey_1 and vt at the teacher's native length (512 tokens), greedy, RULER string
match; dense decoding is the reference. Every sparse row decodes with the same budget (default 64 tokens,
an eighth of the context: 4 sink + 32 recent + 28 chosen) and, per `--targets` value, the same number of
retrieval KV heads: layer 0 (always) plus that share of the 6 KV heads of layers 1-3.

- learned (HardKuma): `train_roles` with the Lagrangian, trained on passkey / NIAH samples of another seed
- learned (L1): the DuoAttention-style gate
- scores: the top KV heads by `hydrahead score`'s fused causal scores (`--scores`, computed if absent)
- random: the mean over `--random_seeds` random draws of as many heads
- uniform: the default without `--roles` (layer 0 and the middle layer), whatever the target

    python benchmarks/sparse_quality.py --budget 64 --targets 0.1,0.3 --limit 25
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hydrahead.decoding import (
    random_roles,
    roles_from_scores,
    sparse_decoding,
    train_roles,
    uniform_roles,
)
from hydrahead.decoding.train import RoleTrainingConfig
from hydrahead.evaluation import evaluate
from hydrahead.models import load_causal_lm
from hydrahead.plan import ModelShape

ROOT = Path(__file__).resolve().parents[1]


def describe(roles) -> str:
    """The retrieval KV heads outside layer 0, as 'L3:0 L3:1'."""
    heads = [f"L{layer}:{kv}" for layer, row in enumerate(roles) if layer for kv, r in enumerate(row) if r == "retrieval"]
    return " ".join(heads) or "-"


def scores_for(model, tokenizer, path: str | None):
    from hydrahead.selection import ScoreConfig, Scores, score_heads

    if path and Path(path).is_file():
        return Scores.load(path)
    print("computing head scores (about a minute)...", flush=True)
    return score_heads(model, tokenizer, ScoreConfig(), progress=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "hydrahead-teacher-3m"))
    parser.add_argument("--tasks", default="niah_single_1,niah_multikey_1,vt")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--budget", default="64")
    parser.add_argument("--targets", default="0.1,0.3", help="retrieval shares of the KV heads of layers 1..")
    parser.add_argument("--limit", type=int, default=25)
    parser.add_argument("--steps", type=int, default=150, help="gate training steps")
    parser.add_argument("--random_seeds", type=int, default=3)
    parser.add_argument("--scores", default=str(ROOT / "results" / "selection" / "teacher_scores.json"))
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(args.model)
    shape = ModelShape.of(model.config)
    budget = int(args.budget) if args.budget.isdigit() else float(args.budget)
    tasks = args.tasks.split(",")

    def run(roles):
        start = time.perf_counter()
        if roles is None:
            result, read = evaluate(model, tokenizer, args.tasks, [args.length], args.limit, seed=0, progress=False), 1.0
        else:
            with sparse_decoding(model, roles, budget=budget) as state:
                result = evaluate(model, tokenizer, args.tasks, [args.length], args.limit, seed=0, progress=False)
            read = state.stats.read_fraction
        row = {t: result.scores[t][args.length] for t in tasks}
        row["mean"], row["kv_read"], row["seconds"] = sum(row[t] for t in tasks) / len(tasks), read, time.perf_counter() - start
        return row

    rows = [("dense", "all", None, run(None)), ("uniform rule", describe(uniform_roles(shape)), None, run(uniform_roles(shape)))]
    print("dense and uniform done", flush=True)
    scores = scores_for(model, tokenizer, args.scores)
    for target in [float(t) for t in args.targets.split(",")]:
        for method in ("hardkuma", "l1"):
            cfg = RoleTrainingConfig(method=method, target=target, steps=args.steps, budget=budget)
            trained = train_roles(model, tokenizer, cfg, progress=False)
            rows.append((f"learned ({'HardKuma' if method == 'hardkuma' else 'L1'}), {target:g}",
                         describe(trained.roles), trained.seconds, run(trained.roles)))
        rows.append((f"scores, {target:g}", describe(roles_from_scores(scores, target)), None, run(roles_from_scores(scores, target))))
        draws = [random_roles(shape, target, seed) for seed in range(args.random_seeds)]
        runs = [run(r) for r in draws]
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        rows.append((f"random (mean of {len(draws)}), {target:g}", " / ".join(describe(r) for r in draws), None, mean))
        print(f"target {target} done", flush=True)

    print(f"teacher, {args.length} tokens, {args.limit} samples per task, seed 0; budget {budget} tokens "
          f"(sink 4 + recent 32 + top-k), token selection")
    print("| roles, share | retrieval KV heads beyond layer 0 | " + " | ".join(tasks) + " | mean | KV read | train s |")
    print("|---|---|" + "---:|" * (len(tasks) + 3))
    for name, heads, seconds, r in rows:
        cells = [f"{r[t]:.1f}" for t in tasks] + [f"{r['mean']:.1f}", f"{100 * r['kv_read']:.0f}%",
                                                   f"{seconds:.0f}" if seconds else "-"]
        print(f"| {name} | {heads} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": [{"name": n, "heads": h, "train_s": s, **r} for n, h, s, r in rows]}, f, indent=1)


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
