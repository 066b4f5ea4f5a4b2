"""The multi-turn agent workload (UltraQuant's setting) on a shape-true small config: TTFT and output
throughput per round with prefix reuse under a fixed memory budget for cached KV, per KV format.

Sessions each start with a long prefix (tool docs, history: `--prefix` tokens), then take short turns: a
`--turn`-token user message and `--gen` greedy tokens. Every round, each session takes one turn, in a
seeded random order (the same for every format). Requests are served one at a time by `model.generate`
with the session's cache as `past_key_values`: a resident cache is reused (only the new tokens are
prefilled); an evicted one is rebuilt by a prefill of the whole history. After each turn, least recently
used sessions' caches are evicted until the cached KV fits the budget (their true bytes, sink and window
included). The budget is the same for every format; by default it holds `--budget-sessions` bf16 sessions
at their final length, so a 4-bit cache keeps about 3.5x as many sessions resident.

Model: Qwen3-0.6B's attention and MLP shape (hidden 1024, 16 query / 8 KV heads, head_dim 128, FFN 3072),
`--layers` of its 28 layers, a 32K vocabulary instead of 152K (the KV does not depend on it), random
weights, bfloat16 (the sink and window are held in bf16). One request at a time (batch 1): UltraQuant's
throughput gain also comes from batching more resident sessions on a GPU, which this CPU run does not do.

    python benchmarks/agent_workload.py                      # short default run
    python benchmarks/agent_workload.py --sessions 8 --rounds 6 --prefix 4096 --layers 4
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import OrderedDict

import torch
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM
from transformers.generation.streamers import BaseStreamer

from bound import bound_line, read_bandwidth, weight_bytes

from hydrahead.compat import cache_arg
from hydrahead.decode_linear import use_decode_linear
from hydrahead.kv import (
    KVCacheError,
    QuantizedKVCache,
    canonical_spec,
    use_blockwise_attention,
)

FORMATS = "bf16,fp8,int4,mxfp4,nvfp4,tq4:int4"
ULTRAQUANT = {"late_p50_ttft": 3.47, "all_p50_ttft": 2.3, "throughput": 1.63}


def qwen3_06b_like(layers: int, vocab: int) -> Qwen3Config:
    config = Qwen3Config(vocab_size=vocab, hidden_size=1024, intermediate_size=3072, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=None,
                         rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"})
    config._attn_implementation = "sdpa"
    return config


class FirstToken(BaseStreamer):
    """Notes when generate() hands out its first new token (its first `put` is the prompt)."""

    def __init__(self):
        self.calls, self.at = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self):
        pass


class Server:
    """Session caches under a byte budget with LRU eviction; `turn` serves one request and times it."""

    def __init__(self, model, spec: str, budget: int, window: int, sink: int, block: int):
        self.model, self.spec, self.budget = model, spec, budget
        self.window, self.sink, self.block = window, sink, block
        self.caches: OrderedDict[int, object] = OrderedDict()  # session -> cache, least recently used first

    def new_cache(self):
        if self.spec == "dynamic":
            return DynamicCache()
        return QuantizedKVCache(self.model.config, self.spec, self.window, self.sink, self.block)

    def turn(self, session: int, ids: torch.Tensor, gen: int) -> tuple[torch.Tensor, float, bool]:
        """(sequence with the new tokens, seconds to the first token, whether the prefix was resident)."""
        hit = session in self.caches
        cache = self.caches.pop(session) if hit else self.new_cache()
        timer = FirstToken()
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **cache_arg(cache),
                                      max_new_tokens=gen, min_new_tokens=gen, do_sample=False, streamer=timer,
                                      pad_token_id=0)
        self.caches[session] = cache
        self._evict(session)
        return out, timer.at - start, hit

    def resident_bytes(self) -> int:
        return sum(cache_bytes(c) for c in self.caches.values())

    def _evict(self, current: int) -> None:
        while self.resident_bytes() > self.budget:
            victim = next(iter(self.caches))
            if victim == current:
                raise KVCacheError(f"session {current} alone holds {cache_bytes(self.caches[current]) / 2**20:.1f} MiB "
                                   f"of KV in {self.spec}, more than the budget of {self.budget / 2**20:.1f} MiB")
            del self.caches[victim]


def cache_bytes(cache) -> int:
    if isinstance(cache, QuantizedKVCache):
        return cache.nbytes()
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers if layer.is_initialized)


def session_bytes(model, spec: str, tokens: int, window: int, sink: int, block: int) -> int:
    """The bytes one session's cache holds at `tokens` tokens (random keys: the size does not depend on them)."""
    c = model.config
    cache = Server(model, spec, 0, window, sink, block).new_cache()
    kv = torch.randn(1, c.num_key_value_heads, tokens, c.head_dim, dtype=model.dtype)
    for layer in range(c.num_hidden_layers):
        cache.update(kv, kv, layer)
    return cache_bytes(cache)


def run(model, spec: str, args, budget: int, prefixes: list[torch.Tensor], turns, orders) -> list[dict]:
    server = Server(model, spec, budget, args.window, args.sink, args.block)
    history = [p.clone() for p in prefixes]  # [1, T] each
    rounds = []
    for r, order in enumerate(orders):
        ttft, hits, start = [], 0, time.perf_counter()
        for session in order:
            ids = torch.cat([history[session], turns[r][session]], dim=1)
            history[session], seconds, hit = server.turn(session, ids, args.gen)
            ttft.append(seconds)
            hits += hit
        wall = time.perf_counter() - start
        rounds.append({"round": r + 1, "p50_ttft_s": statistics.median(ttft), "p90_ttft_s": percentile(ttft, 90),
                       "tokens_per_s": len(order) * args.gen / wall, "wall_s": wall, "hits": hits,
                       "resident": len(server.caches), "resident_mib": server.resident_bytes() / 2**20})
        print(f"  {spec} round {r + 1}: P50 TTFT {rounds[-1]['p50_ttft_s']:.2f} s, {hits} hits, "
              f"{len(server.caches)} resident", flush=True)
    return rounds


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    values = sorted(values)
    pos = (len(values) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return values[low] + (values[high] - values[low]) * (pos - low)


def summary(rounds: list[dict], late_from: int) -> dict:
    late = [r for r in rounds if r["round"] >= late_from]
    return {"late_p50_ttft_s": statistics.mean(r["p50_ttft_s"] for r in late),
            "all_p50_ttft_s": statistics.mean(r["p50_ttft_s"] for r in rounds),
            "tokens_per_s": sum(r["tokens_per_s"] * r["wall_s"] for r in rounds) / sum(r["wall_s"] for r in rounds)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default=FORMATS, help="K:V specs; 'dynamic' adds transformers' DynamicCache")
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prefix", type=int, default=2048, help="tokens of each session's shared prefix")
    parser.add_argument("--turn", type=int, default=64, help="tokens of a user turn")
    parser.add_argument("--gen", type=int, default=16, help="tokens generated per turn")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--budget-sessions", type=float, default=2.5,
                        help="the KV budget in bf16 sessions at their final length (ignored with --budget-mib)")
    parser.add_argument("--budget-mib", type=float, help="the KV budget in MiB, the same for every format")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = Qwen3ForCausalLM(qwen3_06b_like(args.layers, args.vocab)).to(torch.bfloat16).eval()
    use_blockwise_attention(model)
    use_decode_linear(model)
    g = torch.Generator().manual_seed(args.seed)
    prefixes = [torch.randint(1, args.vocab, (1, args.prefix), generator=g) for _ in range(args.sessions)]
    turns = [[torch.randint(1, args.vocab, (1, args.turn), generator=g) for _ in range(args.sessions)]
             for _ in range(args.rounds)]
    orders = [torch.randperm(args.sessions, generator=g).tolist() for _ in range(args.rounds)]
    final_tokens = args.prefix + args.rounds * (args.turn + args.gen)
    specs = [s.strip() for s in args.formats.split(",")]
    labels = {s: "DynamicCache (bf16)" if s == "dynamic" else canonical_spec(s) for s in specs}
    bf16_session = session_bytes(model, "bf16", final_tokens, args.window, args.sink, args.block)
    budget = int(args.budget_mib * 2**20) if args.budget_mib else int(args.budget_sessions * bf16_session)
    per_session = {s: session_bytes(model, s, final_tokens, args.window, args.sink, args.block) for s in specs}
    for s, size in per_session.items():
        if size > budget:
            parser.error(f"the memory budget of {budget / 2**20:.1f} MiB is smaller than one session "
                         f"({size / 2**20:.1f} MiB of KV in {labels[s]} at {final_tokens} tokens)")
    print(f"Qwen3-0.6B-like, {args.layers} layers, bf16, {torch.get_num_threads()} threads; {args.sessions} sessions x "
          f"{args.rounds} rounds, prefix {args.prefix}, turns of {args.turn} + {args.gen} tokens; budget "
          f"{budget / 2**20:.1f} MiB; sink {args.sink}, window {args.window}, blocks of {args.block}", flush=True)
    bandwidth = read_bandwidth()
    print(bound_line(bandwidth), flush=True)
    # the most output tokens per second a decode could reach: each token reads the weights and one session's
    # cache at its final length (prefills, which the workload also runs, are not in it)
    bound = {s: bandwidth / (weight_bytes(model) + per_session[s]) for s in specs}
    start = time.perf_counter()
    results = {s: run(model, s, args, budget, prefixes, turns, orders) for s in specs}
    late_from = args.rounds // 2 + 1
    print(f"\n{time.perf_counter() - start:.0f} s in all\n")
    print("| K:V | MiB/session | fits | decode bound tok/s | round | P50 TTFT s | P90 TTFT s | output tok/s "
          "(share of bound) | hits | prefixes resident |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s, rounds in results.items():
        for r in rounds:
            lead = [labels[s], f"{per_session[s] / 2**20:.1f}", f"{budget / per_session[s]:.1f}",
                    f"{bound[s]:.0f}"] if r["round"] == 1 else ["", "", "", ""]
            print(f"| {' | '.join(lead)} | {r['round']} | {r['p50_ttft_s']:.2f} | {r['p90_ttft_s']:.2f} "
                  f"| {r['tokens_per_s']:.1f} ({r['tokens_per_s'] / bound[s]:.0%}) | {r['hits']}/{args.sessions} "
                  f"| {r['resident']} |")
    sums = {s: summary(rounds, late_from) for s, rounds in results.items()}
    base = "fp8" if "fp8" in sums else specs[0]
    print(f"\nAgainst {labels[base]} (x = its P50 TTFT / ours, ours tok/s / its); late rounds = {late_from}..{args.rounds}\n")
    print("| K:V | late P50 TTFT s (x) | all-round P50 TTFT s (x) | output tok/s (x) |")
    print("|---|---:|---:|---:|")
    b = sums[base]
    for s, m in sums.items():
        print(f"| {labels[s]} | {m['late_p50_ttft_s']:.2f} ({b['late_p50_ttft_s'] / m['late_p50_ttft_s']:.2f}x) "
              f"| {m['all_p50_ttft_s']:.2f} ({b['all_p50_ttft_s'] / m['all_p50_ttft_s']:.2f}x) "
              f"| {m['tokens_per_s']:.1f} ({m['tokens_per_s'] / b['tokens_per_s']:.2f}x) |")
    print(f"| UltraQuant (paper, vs FP8, AMD GPU) | ({ULTRAQUANT['late_p50_ttft']}x) | ({ULTRAQUANT['all_p50_ttft']}x) "
          f"| ({ULTRAQUANT['throughput']}x) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "budget_bytes": budget, "session_bytes": per_session, "rounds": results,
                       "read_bandwidth": bandwidth, "decode_bound_tok_s": bound,
                       "summary": sums}, f, indent=1)


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
