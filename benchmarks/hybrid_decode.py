"""Cache bytes, decode-step time and prefill time: original vs layer-wise 3:1 vs head-wise 7:1 hybrids.

A shape-true Qwen3-0.6B-like config (hidden 1024, 16 query / 8 KV heads, head_dim 128, FFN 3072, vocab
151,936) with random weights, since speed does not depend on them; `--layers` keeps a few of its 28
layers so that it fits this machine. Decode steps run on a cache filled with random keys, values and
GDN states of the given length, so no prefill is needed to measure them.

    python benchmarks/hybrid_decode.py --layers 4 --lengths 4096,16384,32768 --prefill 16384
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM

from bound import bound_line, read_bandwidth, save_run, weight_bytes

from hydrahead.attention import HybridOptions
from hydrahead.compat import cache_arg
from hydrahead.cache import HydraCache, KVCache, cache_nbytes
from hydrahead.convert import convert
from hydrahead.decode_linear import use_decode_linear
from hydrahead.kv import use_blockwise_attention
from hydrahead.plan import HeadPlan


def qwen3_06b_like(layers: int) -> Qwen3Config:
    config = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                         tie_word_embeddings=True, rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"})
    config._attn_implementation = "sdpa"
    return config


def plans(config) -> dict[str, HeadPlan | None]:
    layers = config.num_hidden_layers
    # head-wise 7:1 of 16 heads = 2 FA heads per layer; at query granularity they sit in two KV groups,
    # at kv granularity they are the two query heads of one KV group
    return {
        "original": None,
        "original, DynamicCache": None,  # as transformers ships it: sdpa over a cache that concatenates every step
        "layerwise 3:1": HeadPlan.layerwise(config, [i for i in range(layers) if i % 4 == 3]),
        "headwise 7:1 query": HeadPlan.from_config(config, [[0, 9]] * layers, "query"),
        "headwise 7:1 kv": HeadPlan.from_config(config, [[0, 1]] * layers, "kv"),
    }


def build(config, plan, dtype, transformers_as_shipped: bool = False):
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(copy.deepcopy(config)).to(dtype).eval()
    if plan is None and not transformers_as_shipped:
        use_blockwise_attention(model)  # hydrahead's attention: a decode step reads the cache once, no GQA copy
        use_decode_linear(model)  # and its products (a hybrid's are already)
    if plan is not None:
        model = convert(model, plan, HybridOptions(logscale_length=config.max_position_embeddings), inplace=True)
    return model.eval()


def filled_cache(model, plan, length: int, dtype, dynamic: bool = False):
    """A cache as a prefill of `length` tokens would leave it, with random contents: a plain model's in
    hydrahead's copy-free KVCache, or (`dynamic`) in transformers' DynamicCache."""
    c = model.config
    if plan is None:
        cache = DynamicCache() if dynamic else KVCache(c)
        for layer in range(c.num_hidden_layers):
            kv = torch.randn(1, c.num_key_value_heads, length, c.head_dim, dtype=dtype)
            cache.update(kv, kv.clone(), layer)
        return cache
    cache = HydraCache(c)
    for layer, attn in enumerate(model.model.layers):
        attn = attn.self_attn
        if attn.fa is not None:
            kv = torch.randn(1, len(attn.fa_kv_heads), length, c.head_dim, dtype=dtype)
            cache.update(kv, kv.clone(), layer)
        if attn.gdn is not None:
            g = attn.gdn
            cache.update_gdn_state(layer, conv=torch.randn(1, g.conv.shape[0], g.conv_size - 1, dtype=dtype),
                                   recurrent=torch.randn(1, g.num_heads, c.head_dim, c.head_dim) * 0.01)
    cache.advance(length)
    return cache


def decode_ms(model, cache, length: int, repeats: int) -> float:
    token = torch.tensor([[42]])
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            start = time.perf_counter()
            model(token, use_cache=True, position_ids=torch.tensor([[length + i]]), **cache_arg(cache))
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3  # the first step warms up


def prefill_s(model, length: int) -> float:
    ids = torch.randint(0, 1000, (1, length))
    with torch.no_grad():
        start = time.perf_counter()
        model(ids, use_cache=True, logits_to_keep=1)
        return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lengths", default="4096,16384,32768")
    parser.add_argument("--prefill", type=int, default=16384, help="prefill length (0 to skip)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    lengths = [int(x) for x in args.lengths.split(",")]
    config = qwen3_06b_like(args.layers)
    print(f"Qwen3-0.6B-like, {args.layers} of 28 layers, {args.dtype}, {torch.get_num_threads()} threads")
    bandwidth = read_bandwidth()
    print(bound_line(bandwidth))
    results = {}
    full = HeadPlan.full_attention(config)
    for name, plan in plans(config).items():
        model = build(config, plan, dtype, transformers_as_shipped="DynamicCache" in name)
        kv_per_token = (plan or full).kv_bytes_per_token(torch.bfloat16)
        state = plan.gdn_state_bytes(dtype=torch.bfloat16) if plan else 0
        entry = {"kv_bytes_per_token_bf16": kv_per_token, "gdn_state_bytes_bf16": state, "decode_ms": {}}
        for length in lengths:
            cache = filled_cache(model, plan, length, dtype, dynamic="DynamicCache" in name)
            entry.setdefault("cache_bytes", {})[length] = cache_nbytes(cache)
            entry.setdefault("step_bytes", {})[length] = weight_bytes(model) + cache_nbytes(cache)
            entry["decode_ms"][length] = decode_ms(model, cache, length, args.repeats)
            del cache
        if args.prefill and "DynamicCache" not in name:  # a prefill does not depend on the cache class
            entry["prefill_s"] = prefill_s(model, args.prefill)
        results[name] = entry
        print(f"  {name}: done", flush=True)
        del model
    base = results["original"]
    header = ["model", "KV B/token/layer (bf16)", "GDN state (bf16)"]
    header += [f"decode ms @{n // 1024}K (x; /bound)" for n in lengths]
    if args.prefill:
        header.append(f"prefill s @{args.prefill // 1024}K (x)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, e in results.items():
        cells = [name, f"{e['kv_bytes_per_token_bf16'] / args.layers:,.0f}", f"{e['gdn_state_bytes_bf16'] / 1024 / args.layers:,.0f} KiB/layer"]
        cells += [f"{e['decode_ms'][n]:.2f} ({base['decode_ms'][n] / e['decode_ms'][n]:.2f}x; "
                  f"{e['decode_ms'][n] / (e['step_bytes'][n] / bandwidth * 1e3):.1f}x)" for n in lengths]
        if args.prefill:
            cells.append(f"{e['prefill_s']:.2f} ({base['prefill_s'] / e['prefill_s']:.2f}x)" if "prefill_s" in e else "")
        print("| " + " | ".join(cells) + " |")
    print("(x) = speed-up over the original model in the same run; /bound = time over the bytes the step must read "
          "(weights + cache) at the bandwidth measured above; KV bytes are per token per layer; the original runs on "
          "hydrahead's KVCache (appended in place) and attention (no GQA copy), the row below it as transformers "
          "ships it (sdpa, DynamicCache); the hybrids' FA heads read their cache as the original does")
    print(bound_line(bandwidth) + " (after the run)")
    save_run(args.json, args, bandwidth, results)


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
