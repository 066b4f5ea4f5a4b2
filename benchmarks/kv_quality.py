"""Task quality of the teacher with a quantized KV cache, per format and K:V pairing, against a bf16 cache.

niah_single_1, niah_multikey_1 and vt at the teacher's native length (512 tokens), `--limit` samples each
(seed 0), greedy, RULER scoring. The window is made small on purpose (sink 4, window 32, blocks of 64), so
that about 87% of every 512-token prompt (448 tokens) is held quantized when the answer is generated; the
prompt's own prefill attends it in full precision, every generated token reads the quantized blocks. The
bf16 row stores the same blocks in bf16 (the reference); "none" is the model's own float32 DynamicCache.

    python benchmarks/kv_quality.py --limit 50
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hydrahead.evaluation import build_samples, score_samples
from hydrahead.kv import KVCacheFactory, canonical_spec, parse_cache_spec
from hydrahead.models import load_causal_lm

PAIRINGS = "bf16,fp8,int4-token,int4,mxfp4,nvfp4,tq4,tq4:int4,tq4:mxfp4"


def bytes_per_token(spec: str, head_dim: int, kv_heads: int) -> float:
    """K + V bytes of one layer per token from the codecs (per-block scalars amortised to zero)."""
    return kv_heads * sum(c.build(head_dim).bytes_per_token() for c in parse_cache_spec(spec))


def quantized_share(tok, samples, sink: int, window: int, block: int) -> float:
    """The share of prompt tokens in quantized blocks from the first generated token on (padding aside)."""
    lengths = [len(tok(s.prompt(), add_special_tokens=False)["input_ids"]) for s in samples]
    return sum(max(0, n - sink - window) // block * block for n in lengths) / sum(lengths)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/hydrahead-teacher-3m")
    parser.add_argument("--tasks", default="niah_single_1,niah_multikey_1,vt")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairings", default=PAIRINGS)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tok = load_causal_lm(args.model)
    samples = build_samples(tok, args.tasks, [args.length], args.limit, args.seed)
    tasks = args.tasks.split(",")
    d, kv_heads = model.config.head_dim, model.config.num_key_value_heads
    rows = {}
    for spec in ["none", *args.pairings.split(",")]:
        factory = None if spec == "none" else KVCacheFactory(spec, args.window, args.sink, args.block)
        result = score_samples(model, tok, samples, args.batch_size, progress=False, cache_factory=factory)
        scores = {t: result.scores[t][args.length] for t in tasks}
        label = "none (float32 DynamicCache)" if spec == "none" else canonical_spec(spec)
        rows[spec] = {"label": label, "scores": scores, "mean": sum(scores.values()) / len(scores),
                      "bytes": 4 * 2 * d * kv_heads if spec == "none" else bytes_per_token(spec, d, kv_heads)}
        print(f"  {label}: {rows[spec]['mean']:.1f} ({time.perf_counter() - start:.0f} s)", flush=True)
    reference = rows["bf16"]["mean"] if "bf16" in rows else rows["none"]["mean"]
    share = quantized_share(tok, samples, args.sink, args.window, args.block)
    print(f"\nteacher {args.model}, {args.limit} samples per task at {args.length} tokens, seed {args.seed}; "
          f"sink {args.sink}, window {args.window}, blocks of {args.block}: {100 * share:.0f}% of the prompt tokens "
          f"are read quantized while answering; {torch.get_num_threads()} threads; {time.perf_counter() - start:.0f} s\n")
    head = ["K:V", "B/token/layer", *tasks, "mean", "mean - bf16"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for r in rows.values():
        cells = [r["label"], f"{r['bytes']:.0f}", *(f"{r['scores'][t]:.1f}" for t in tasks), f"{r['mean']:.1f}",
                 f"{r['mean'] - reference:+.1f}"]
        print("| " + " | ".join(cells) + " |")
    four_bit = {s: r for s, r in rows.items() if s not in ("none", "bf16", "fp8")}
    if four_bit and "bf16" in rows:
        best = max(four_bit.values(), key=lambda r: r["mean"])
        gap = best["mean"] - reference
        print(f"\nbest 4-bit pairing: {best['label']}, {gap:+.1f} points against bf16 (goal: within 1 point): "
              f"{'met' if gap >= -1 else 'not met'}; one sample is {100 / args.limit:.0f} points of a task's score")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
