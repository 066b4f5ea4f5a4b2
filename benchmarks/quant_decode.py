"""One decode step with a 4-bit KV cache against the model-dtype cache, on the Qwen3-0.6B shape, with its bound.

A shape-true Qwen3-0.6B-like model (hybrid_decode.py's config: hidden 1024, 16 query / 8 KV heads, head_dim 128,
FFN 3072, vocab 151,936; random weights), `--layers` of its 28 layers, in `--dtype`. Per context length the
cache is filled with random keys and values as a prefill would leave it, then single-token forwards are timed
(median of `--repeats`, after two warm-up steps; the caches take turns step by step, so that load from other
processes hits each alike). Caches:

- the model dtype ("bf16" in the table when --dtype bfloat16): keys and values appended in place into a
  preallocated buffer (hydrahead.cache.KVLayer), read by hydrahead's decode attention
  (attention/gqa_decode.py): no copy of the cache per step;
- each `--specs` entry (e.g. int4 = int4-channel keys, int4-token values; tq4:int4): a QuantizedKVCache (sink 4,
  window 128, blocks of 64) read by hydrahead's attention: by default int4 through the native kernel
  (hydrahead.kv.native) and other formats through the inductor-compiled fused function; `--path compiled` times
  the compiled function for int4 too, `--path reference` the plain-PyTorch loop.

Printed per cache and length: ms per step, the model-dtype step's time over it (x, in the same run), and time over
the bandwidth bound (bytes the step must read, weights + cache as stored, at the read bandwidth measured in the
same run by bound.py), plus the load average before and after.

    OMP_NUM_THREADS=1 python benchmarks/quant_decode.py --layers 2 --lengths 8192,32768 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from transformers import Qwen3ForCausalLM
from transformers.cache_utils import Cache

from bound import bound_line, load_average, read_bandwidth, save_run, weight_bytes
from hybrid_decode import qwen3_06b_like

from hydrahead.cache import KVLayer, cache_nbytes
from hydrahead.decode_linear import use_decode_linear
from hydrahead.kv import QuantizedKVCache, fused, native, use_blockwise_attention

# --path: (HYDRAHEAD_NATIVE, HYDRAHEAD_COMPILE, what it means)
PATHS = {
    "native": ("1", "1", "the native kernel for int4, the inductor-compiled function for other formats"),
    "compiled": ("0", "1", "the inductor-compiled fused function for every format"),
    "reference": ("0", "0", "the plain-PyTorch loop over chunks"),
}


class InPlaceLayer(KVLayer):
    """hydrahead's in-place KV layer under transformers' Cache, which passes the attention's cache kwargs along."""

    def update(self, key_states, value_states, cache_kwargs=None):
        return super().update(key_states, value_states)


def filled(model, spec: str | None, length: int, dtype) -> Cache:
    """A cache holding `length` random tokens per layer, as a prefill would leave it."""
    c = model.config
    g = torch.Generator().manual_seed(0)
    if spec is None:
        cache = Cache(layers=[InPlaceLayer(reserve=length + 64) for _ in range(c.num_hidden_layers)])
    else:
        cache = QuantizedKVCache(c, spec, window=128, sink=4, block_size=64)
    for layer in range(c.num_hidden_layers):
        k = torch.randn(1, c.num_key_value_heads, length, c.head_dim, generator=g).to(dtype)
        v = torch.randn(1, c.num_key_value_heads, length, c.head_dim, generator=g).to(dtype)
        cache.update(k, v, layer)
    return cache


def decode_ms(model, caches: dict[str, Cache], length: int, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median ms of a single-token forward per cache. The caches take turns step by step, so that load from other
    processes hits them alike; the first `warmup` rounds are not counted (they compile, once per process)."""
    times: dict[str, list[float]] = {name: [] for name in caches}
    with torch.no_grad():
        for i in range(warmup + repeats):
            position = torch.tensor([[length + i]])
            for name, cache in caches.items():
                start = time.perf_counter()
                model(torch.tensor([[42]]), past_key_values=cache, use_cache=True, position_ids=position)
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lengths", default="8192,32768")
    parser.add_argument("--specs", default="int4,tq4:int4")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--path", default="native", choices=list(PATHS),
                        help="how the 4-bit chunks are read (default: native): " + "; ".join(
                            f"{name}: {what}" for name, (_, _, what) in PATHS.items()))
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ[native.ENV], os.environ[fused.ENV], path = PATHS[args.path]
    dtype = getattr(torch, args.dtype)
    lengths = [int(x) for x in args.lengths.split(",")]
    specs = [None, *args.specs.split(",")]
    base_name = {"bfloat16": "bf16", "float32": "fp32"}[args.dtype]
    load_before = load_average()
    config = qwen3_06b_like(args.layers)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(dtype).eval()
    use_blockwise_attention(model)  # plain tensors still go to sdpa; quantized views to the blockwise path
    use_decode_linear(model)  # decode-step products in the native kernel
    weights = weight_bytes(model)
    print(f"Qwen3-0.6B-like, {args.layers} of 28 layers, {args.dtype}, {torch.get_num_threads()} threads, "
          f"4-bit: {path}")
    bandwidth = read_bandwidth()
    print(bound_line(bandwidth))
    results: dict[str, dict] = {}
    for length in lengths:
        caches = {spec or base_name: filled(model, spec, length, dtype) for spec in specs}
        sizes = {name: cache_nbytes(cache) for name, cache in caches.items()}
        for name, ms in decode_ms(model, caches, length, args.repeats).items():
            results.setdefault(name, {})[length] = {"ms": ms, "step_bytes": weights + sizes[name],
                                                    "cache_bytes": sizes[name]}
            print(f"  {name} @{length}: {ms:.1f} ms", flush=True)
        del caches
    header = ["cache"] + [f"@{n // 1024}K ms (x vs {base_name}; /bound)" for n in lengths]
    header += [f"@{n // 1024}K cache MiB" for n in lengths]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, per in results.items():
        cells = [name]
        for n in lengths:
            e, base = per[n], results[base_name][n]
            bound_ms = e["step_bytes"] / bandwidth * 1e3
            cells.append(f"{e['ms']:.1f} ({base['ms'] / e['ms']:.2f}x; {e['ms'] / bound_ms:.1f}x)")
        cells += [f"{per[n]['cache_bytes'] / 2**20:.1f}" for n in lengths]
        print("| " + " | ".join(cells) + " |")
    print(f"weights {weights / 2**20:.0f} MiB; (x) = the {base_name} step's time over this one, same run; /bound = "
          "time over (weights + cache bytes) / read bandwidth")
    print(f"load average before the run {load_before}; " + bound_line(bandwidth) + " (after the run)")
    save_run(args.json, args, bandwidth, results, load_before=load_before, weight_bytes=weights)


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
