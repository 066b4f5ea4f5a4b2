"""Decode-step time and KV bytes read: dense attention vs LycheeDecode sparse decoding.

A shape-true Qwen3-0.6B-like config (hidden 1024, 16 query / 8 KV heads, head_dim 128, FFN 3072, vocab
151,936) with random weights, since speed does not depend on them; `--layers` keeps a few of its 28 layers
so that long caches fit this machine. The cache is a preallocated `StaticCache` filled with random keys and
values of the given length (no prefill needed; and unlike `DynamicCache`, appending a token does not copy
the whole cache, which would hide the attention cost). Three steps take turns on the same cache, so load from
other processes hits them alike: dense with sdpa, dense with hydrahead's decode attention (`attention/gqa_decode.py`:
the cache read once, no GQA copy; the strong dense baseline), and sparse; the ratios are of their medians in this
run.

Roles: layer 0 retrieval (as always), and `--share` of the other KV heads retrieval, drawn at random (the
speed does not depend on which). Budget `--budget` tokens per sparse head, token selection, sink 4, recent 32.

    python benchmarks/sparse_decode.py --layers 8 --lengths 8192,32768,max --budget 4096 --share 0.1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AttentionInterface, Qwen3Config, Qwen3ForCausalLM, StaticCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from bound import bound_line, read_bandwidth, save_run, weight_bytes

from hydrahead.compat import cache_arg
from hydrahead.decode_linear import use_decode_linear
from hydrahead.decoding import random_roles, sparse_decoding
from hydrahead.decoding.roles import retrieval_count
from hydrahead.kv.attention import blockwise_attention_forward
from hydrahead.plan import ModelShape


def qwen3_06b_like(layers: int) -> Qwen3Config:
    config = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=1 << 20,
                         tie_word_embeddings=True, rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"})
    config._attn_implementation = "sdpa"
    return config


def kv_bytes_per_token(config, dtype) -> int:
    return config.num_hidden_layers * config.num_key_value_heads * 2 * config.head_dim * dtype.itemsize


def longest_fitting(config, dtype, share_of_free_memory: float = 0.5) -> int:
    """The longest multiple of 16K tokens whose cache takes at most this share of the available memory."""
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    return max(16384, int(available * share_of_free_memory / kv_bytes_per_token(config, dtype)) // 16384 * 16384)


DENSE_DECODE = "hydrahead_dense_decode"


def register_dense_decode() -> None:
    """An attention implementation for the strong dense baseline: hydrahead's dense path (a decode step over key /
    value tensors reads the cache once with `attention/gqa_decode.py`, no GQA copy), without the sparse roles."""
    AttentionInterface.register(DENSE_DECODE, blockwise_attention_forward)
    AttentionMaskInterface.register(DENSE_DECODE, sdpa_mask)


def filled_cache(model, length: int, extra: int, dtype) -> StaticCache:
    c = model.config
    cache = StaticCache(config=c, max_cache_len=length + extra)
    g = torch.Generator().manual_seed(0)
    for layer in range(c.num_hidden_layers):
        k = torch.randn(1, c.num_key_value_heads, length, c.head_dim, generator=g, dtype=dtype)
        cache.update(k, torch.randn(k.shape, generator=g, dtype=dtype), layer)
        del k
    return cache


def step(model, cache, position: int) -> float:
    token = torch.tensor([[42]])
    start = time.perf_counter()
    model(token, use_cache=True, position_ids=torch.tensor([[position]]), **cache_arg(cache))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--lengths", default="8192,32768,max", help="'max': the longest that fits half the free memory")
    parser.add_argument("--budget", type=int, default=4096)
    parser.add_argument("--share", type=float, default=0.1, help="retrieval share of the KV heads of layers 1..")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    config = qwen3_06b_like(args.layers)
    lengths = [longest_fitting(config, dtype) if x == "max" else int(x) for x in args.lengths.split(",")]
    shape = ModelShape.of(config)
    roles = random_roles(shape, args.share, seed=0)
    n_ret = sum(r == "retrieval" for layer in roles for r in layer)
    full = ModelShape(28, 16, 8, 128)
    n_full = full.num_kv_heads + retrieval_count(full, args.share)
    print(f"Qwen3-0.6B-like, {args.layers} of 28 layers, {args.dtype}, {torch.get_num_threads()} threads; budget "
          f"{args.budget}; {n_ret} of {args.layers * 8} KV heads retrieval here (layer 0 + {args.share:.0%} of the rest; "
          f"the same rule gives {n_full} of 224 = {n_full / 224:.0%} on all 28 layers)")
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(dtype).eval()
    use_decode_linear(model)  # decode-step products in the native kernel, for every row alike
    register_dense_decode()
    bandwidth = read_bandwidth()
    print(bound_line(bandwidth))
    weights = weight_bytes(model)
    results = {}
    for length in lengths:
        cache = filled_cache(model, length, 3 * (args.repeats + 1), dtype)
        dense, decode, sparse, pos = [], [], [], length
        with torch.no_grad(), sparse_decoding(model, roles, budget=args.budget) as state:
            sparse_name = model.config._attn_implementation
            for i in range(args.repeats + 1):  # the first round warms up
                model.config._attn_implementation = "sdpa"  # dense steps on the same cache, inside the block
                d = step(model, cache, pos)
                model.config._attn_implementation = DENSE_DECODE
                g = step(model, cache, pos + 1)
                model.config._attn_implementation = sparse_name
                read_before = state.stats.kv_bytes_read
                s = step(model, cache, pos + 2)
                pos += 3
                if i:
                    dense.append(d)
                    decode.append(g)
                    sparse.append(s)
        read = state.stats.kv_bytes_read - read_before
        dense_bytes = kv_bytes_per_token(config, dtype) * (pos - 1)
        results[length] = {"dense_ms": statistics.median(dense) * 1e3, "sparse_ms": statistics.median(sparse) * 1e3,
                           "dense_decode_ms": statistics.median(decode) * 1e3,
                           "kv_bytes_dense": dense_bytes, "kv_bytes_sparse": read,
                           "dense_bound_ms": (weights + dense_bytes) / bandwidth * 1e3,
                           "sparse_bound_ms": (weights + read) / bandwidth * 1e3}
        print(f"  {length}: done", flush=True)
        del cache
    print("| context | dense sdpa ms/step (/bound) | dense, hydrahead decode attention | sparse ms/step (/bound) | "
          "speed-up vs sdpa | vs decode attention | KV read/step dense | sparse | share |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in results.items():
        print(f"| {n:,} | {r['dense_ms']:.1f} ({r['dense_ms'] / r['dense_bound_ms']:.1f}x) | "
              f"{r['dense_decode_ms']:.1f} ({r['dense_decode_ms'] / r['dense_bound_ms']:.1f}x) | "
              f"{r['sparse_ms']:.1f} ({r['sparse_ms'] / r['sparse_bound_ms']:.1f}x) | "
              f"{r['dense_ms'] / r['sparse_ms']:.2f}x | "
              f"{r['dense_decode_ms'] / r['sparse_ms']:.2f}x | "
              f"{r['kv_bytes_dense'] / 2**20:,.0f} MiB | {r['kv_bytes_sparse'] / 2**20:,.0f} MiB | "
              f"{r['kv_bytes_sparse'] / r['kv_bytes_dense']:.1%} |")
    print("/bound = time over the weights plus the KV the step reads, at the read bandwidth measured above")
    print(bound_line(bandwidth) + " (after the run)")
    print(f"(median of {args.repeats} steps each; KV bytes are those the attention reads, {args.dtype})")
    save_run(args.json, args, bandwidth, results, lengths=lengths, retrieval_heads=n_ret)


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
