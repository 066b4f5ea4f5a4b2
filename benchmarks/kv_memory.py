"""Peak memory of one decode step's attention over a quantized KV cache: blockwise (online softmax, one
chunk of packed blocks dequantized at a time) against dequantizing the whole cache first (what an attention
kernel that takes plain tensors needs, e.g. transformers' QuantizedCache), per format, in the same run.

One layer of Qwen3-0.6B's attention shape (16 query / 8 KV heads, head_dim 128), bf16, a cache of
`--tokens` tokens (sink 4, window 128, blocks of 64). Peak = the largest sum of live bytes allocated
during the call, from torch.profiler's memory records (CPU: each op's own allocations at its start, frees
as they happen; a transient inside one op is not seen); the stored cache itself is not counted in it
and is printed beside it.

    python benchmarks/kv_memory.py --tokens 4096,32768
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from hydrahead.kv import QuantizedKVLayer
from hydrahead.kv.attention import online_softmax_attention
from hydrahead.kv.spec import parse_cache_spec

FORMATS = "bf16,fp8,mxfp4,nvfp4,tq4:int4"
Q_HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128


def peak_bytes(fn, *args) -> tuple[int, float]:
    """(peak live bytes allocated inside fn(*args), seconds) from the profiler's allocation / free events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        start = time.perf_counter()
        out = fn(*args)
        seconds = time.perf_counter() - start
    del out
    # an op's own allocations (net of what it frees inside) at its start; frees from Python as "[memory]" events
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak, seconds


def dense_attention(query, view):
    """Dequantize every block, then one sdpa call: the reference that needs the whole cache in high precision."""
    keys, values = view.dense()  # [B, H, T, D]
    groups = query.shape[1] // keys.shape[1]
    return F.scaled_dot_product_attention(query, keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="4096,32768")
    parser.add_argument("--formats", default=FORMATS)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print("| K:V | tokens | stored MiB | blockwise peak MiB (x stored) | dense peak MiB (x stored) | blockwise ms | dense ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for tokens in (int(t) for t in args.tokens.split(",")):
        kv = torch.randn(1, KV_HEADS, tokens, HEAD_DIM, generator=g).bfloat16()
        query = torch.randn(1, Q_HEADS, 1, HEAD_DIM, generator=g).bfloat16()
        for spec in args.formats.split(","):
            key_choice, value_choice = parse_cache_spec(spec)
            layer = QuantizedKVLayer(0, key_choice.build(HEAD_DIM), value_choice.build(HEAD_DIM))
            layer.update(kv[..., :-1, :], kv[..., :-1, :])
            view, _ = layer.update(kv[..., -1:, :], kv[..., -1:, :])
            stored = layer.nbytes()
            blockwise, t_block = peak_bytes(online_softmax_attention, query, view, None, HEAD_DIM**-0.5)
            dense, t_dense = peak_bytes(dense_attention, query, view)
            mib = 2**20
            print(f"| {key_choice.label}:{value_choice.label} | {tokens} | {stored / mib:.1f} "
                  f"| {blockwise / mib:.2f} ({blockwise / stored:.2f}x) | {dense / mib:.1f} ({dense / stored:.2f}x) "
                  f"| {t_block * 1e3:.1f} | {t_dense * 1e3:.1f} |", flush=True)
    print(f"\n{torch.get_num_threads()} threads; peaks are bytes allocated during one decode step's attention of one "
          "layer (B = 1), above what the cache already holds")


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
