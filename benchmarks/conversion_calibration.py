"""How far a freshly converted hybrid starts from the original, with and without gamma calibrated to the
original heads' output scale (`convert(..., calibration_ids=...)`), before any training.

For each plan and calibration seed: the KL divergence from the teacher's next-token distribution and the
top-1 agreement on held-out packed batches (mean and a 95% interval over batches), and RULER scores at
the native length.

    python benchmarks/conversion_calibration.py --plans examples/plans/teacher_7to1_query.json --seeds 0,1
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F

from hydrahead.attention import HybridOptions
from hydrahead.convert import convert
from hydrahead.evaluation import evaluate
from hydrahead.models import load_causal_lm
from hydrahead.plan import HeadPlan
from hydrahead.transfer.data import packed_batch


def interval(values: list[float]) -> str:
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{mean:.3f} ± {half:.3f}"


@torch.no_grad()
def distance(teacher, hybrid, batches: list[torch.Tensor]) -> tuple[list[float], list[float]]:
    kls, agree = [], []
    for ids in batches:
        p = F.log_softmax(teacher(input_ids=ids, use_cache=False).logits.float(), -1)
        q = F.log_softmax(hybrid(input_ids=ids, use_cache=False).logits.float(), -1)
        kls.append(F.kl_div(q, p, log_target=True, reduction="none").sum(-1).mean().item())
        agree.append((p.argmax(-1) == q.argmax(-1)).float().mean().item())
    return kls, agree


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="models/hydrahead-teacher-3m")
    parser.add_argument("--plans", default="examples/plans/teacher_7to1_query.json")
    parser.add_argument("--seeds", default="0,1", help="calibration (and GDN initialisation) seeds")
    parser.add_argument("--calibration_rows", type=int, default=8)
    parser.add_argument("--eval_batches", type=int, default=8)
    parser.add_argument("--tasks", default="niah_single_1,niah_multikey_1,niah_multivalue,vt")
    parser.add_argument("--limit", type=int, default=10)
    args = parser.parse_args()

    teacher, tokenizer = load_causal_lm(args.teacher)
    native = teacher.config.max_position_embeddings
    heldout = [packed_batch(tokenizer, 999_983, i, native, 4) for i in range(args.eval_batches)]
    print(f"teacher {args.teacher}, native {native}; KL(teacher || hybrid) and top-1 agreement over "
          f"{args.eval_batches} held-out batches of 4 x {native} tokens (mean ± 95% interval); "
          f"RULER at {native}, {args.limit} samples per task; load {open('/proc/loadavg').read().split()[0]}")
    print("| plan | gamma | seed | KL | top-1 agree | " + " | ".join(args.tasks.split(",")) + " | mean |")
    print("|---|---|---:|---:|---:|" + "---:|" * (len(args.tasks.split(",")) + 1))
    for plan_path in args.plans.split(","):
        plan = HeadPlan.load(plan_path)
        for seed in (int(s) for s in args.seeds.split(",")):
            calibration = packed_batch(tokenizer, 12_345 + seed, 0, native, args.calibration_rows)
            for gamma in ("1", "calibrated"):
                torch.manual_seed(seed)
                hybrid = convert(teacher, plan, HybridOptions(logscale_length=native),
                                 calibration_ids=calibration if gamma == "calibrated" else None).eval()
                kls, agree = distance(teacher, hybrid, heldout)
                result = evaluate(hybrid, tokenizer, args.tasks, [native], limit=args.limit, seed=0, progress=False)
                scores = [result.scores[t][native] for t in args.tasks.split(",")]
                print(f"| {plan_path.split('/')[-1]} | {gamma} | {seed} | {interval(kls)} | {interval(agree)} | "
                      + " | ".join(f"{s:.1f}" for s in scores) + f" | {statistics.fmean(scores):.1f} |", flush=True)
                del hybrid


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
