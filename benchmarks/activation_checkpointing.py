"""Training memory and step time of a hybrid with and without activation checkpointing.

A shape-true Qwen3-0.6B-like hybrid (hidden 1024, 16 query / 8 KV heads, head_dim 128, FFN 3072; `--layers` of
its 28 layers, `--vocab` smaller than Qwen3's so that the logits do not dominate), head-wise 7:1 (two FA query
heads per layer), random weights. A training step is what the distill and long stages do per micro-batch:
forward, next-token cross-entropy, backward. Each mode runs in a fresh process, so that its peak resident memory
(`ru_maxrss`) is its own; the figure is that peak minus the memory held before the first step (the weights; no
gradients yet, no optimizer). Prints both modes and the ratios; the time is the median of the steps after the
first.

    OMP_NUM_THREADS=1 python benchmarks/activation_checkpointing.py --layers 4 --seq_len 2048 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def one_mode(args) -> dict:
    import torch
    from transformers import Qwen3ForCausalLM

    from hybrid_decode import qwen3_06b_like

    from hydrahead.attention import HybridOptions
    from hydrahead.convert import convert
    from hydrahead.plan import HeadPlan

    torch.manual_seed(0)
    config = qwen3_06b_like(args.layers)
    config.vocab_size = args.vocab
    heads = [[0, 8] for _ in range(args.layers)]  # two of 16 query heads FA per layer: 7:1
    model = convert(Qwen3ForCausalLM(config), HeadPlan.from_config(config, heads, "query"),
                    HybridOptions(logscale_length=4096), inplace=True).train()
    if args.recompute:
        model.activation_checkpointing_enable()
    ids = torch.randint(1, args.vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(1))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": round((peak - before) / 1024, 1), "step_s": round(statistics.median(times[1:] or times), 3),
            "times": [round(t, 3) for t in times], "loss": round(loss.item(), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq_len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="training steps per mode (the first is not timed)")
    ap.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)  # one mode, in a child process
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    for name in ("layers", "vocab", "seq_len", "batch", "steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be at least 1")
    if os.environ.get("HH_AC_CHILD"):
        print(json.dumps(one_mode(args)))
        return
    results = {}
    for mode in ("plain", "recompute"):
        cmd = [sys.executable, __file__, *sys.argv[1:]] + (["--recompute"] if mode == "recompute" else [])
        out = subprocess.run(cmd, env={**os.environ, "HH_AC_CHILD": "1"}, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{mode} failed:\n{out.stderr[-2000:]}")
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    plain, again = results["plain"], results["recompute"]
    print(f"Qwen3-0.6B-like hybrid, {args.layers} layers, head-wise 7:1, vocab {args.vocab}, batch {args.batch} x "
          f"{args.seq_len} tokens; load average {os.getloadavg()[0]:.2f}")
    print("| mode | peak memory of a training step (MiB) | step (s) | loss |")
    print("|---|---:|---:|---:|")
    for mode, r in results.items():
        print(f"| {mode} | {r['peak_mib']} | {r['step_s']} | {r['loss']} |")
    print(f"recompute / plain: memory {again['peak_mib'] / plain['peak_mib']:.2f}x, "
          f"time {again['step_s'] / plain['step_s']:.2f}x (the same loss: {plain['loss'] == again['loss']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "load_average": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
