"""Error figures of each KV format and K:V pairing: bytes per token per layer, relative MSE of K and V, the
relative error of the attention output, and the top-k overlap of attention weights.

Two sources: keys, values and queries captured from the shipped teacher on real task prompts (Qwen3, 2 KV
heads of head_dim 32, post-RoPE keys, every layer), and synthetic data at head_dim 128 (8 KV / 16 query
heads) whose keys have a few large fixed channels, as real keys do. Keys and values are quantized in
blocks of `--block` tokens as the cache stores them; no sink or window is kept, so these are the codecs'
own errors. Attention figures use the last `--queries` queries of each prompt (causal), exact vs quantized
K and V; top-k overlap is |top-k(exact) & top-k(quantized)| / k per query and head, averaged.

    python benchmarks/kv_error.py --samples 4 --queries 64
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from hydrahead.kv.metrics import attention_errors, fake_quantize
from hydrahead.kv.spec import parse_cache_spec
from hydrahead.models import load_causal_lm
from hydrahead.tasks import generate

PAIRINGS = "bf16,fp8,int4-token,int4,mxfp4,nvfp4,tq4,tq4-qjl,tq4:int4,tq4:mxfp4,mxfp4:int4"
CAPTURED: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def capture_attention(module, query, key, value, attention_mask, **kwargs):
    """sdpa, keeping each layer's query [B, Hq, T, D] and key / value [B, H, T, D] on the way."""
    CAPTURED[module.layer_idx] = (query.detach(), key.detach(), value.detach())
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def teacher_qkv(model_dir: str, tasks: list[str], samples: int, length: int, seed: int):
    """[(query, keys, values)] per prompt and layer, from the teacher's forward passes on task prompts."""
    AttentionInterface.register("kv_error_capture", capture_attention)
    AttentionMaskInterface.register("kv_error_capture", sdpa_mask)
    model, tok = load_causal_lm(model_dir)
    model.set_attn_implementation("kv_error_capture")
    out = []
    for task in tasks:
        for sample in generate(task, tok, length, samples, seed=seed):
            ids = tok(sample.prompt(), return_tensors="pt").input_ids
            with torch.no_grad():
                model(ids)
            out += [CAPTURED[i] for i in sorted(CAPTURED)]
            CAPTURED.clear()
    return out, model.config


def synthetic_qkv(tokens: int, seed: int, head_dim: int = 128, kv_heads: int = 8, q_heads: int = 16, prompts: int = 2):
    """Gaussian keys with 4 outlier channels (x15, offset 5), Gaussian values, queries that weight the
    outlier channels too (so the outliers matter for the scores, as in real models)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(prompts):
        keys = torch.randn(1, kv_heads, tokens, head_dim, generator=g)
        outliers = torch.randperm(head_dim, generator=g)[:4]
        keys[..., outliers] = keys[..., outliers] * 15 + 5
        values = torch.randn(1, kv_heads, tokens, head_dim, generator=g)
        query = torch.randn(1, q_heads, tokens, head_dim, generator=g)
        query[..., outliers] *= 0.3  # a realistic share of the score from the outlier channels
        out.append((query * 2, keys, values))
    return out


def bytes_per_token(spec: str, head_dim: int, kv_heads: int, block: int) -> float:
    """Measured: stored bytes of K and V over 1024 tokens of every KV head, per token (one layer)."""
    keys, values = (c.build(head_dim) for c in parse_cache_spec(spec))
    x = torch.randn(1, kv_heads, 1024, head_dim)
    total = sum(fmt.quantize(x[..., i:i + block, :]).nbytes for fmt in (keys, values) for i in range(0, 1024, block))
    return total / 1024


def errors(spec: str, qkv, head_dim: int, block: int, queries: int) -> dict[str, float]:
    key_fmt, value_fmt = (c.build(head_dim) for c in parse_cache_spec(spec))
    sums = defaultdict(float)
    per = defaultdict(list)
    for query, keys, values in qkv:
        k_hat, v_hat = fake_quantize(keys, key_fmt, block), fake_quantize(values, value_fmt, block)
        for name, x, x_hat in (("k", keys, k_hat), ("v", values, v_hat)):
            sums[f"{name}_err"] += float(((x_hat.double() - x.double()) ** 2).sum())
            sums[f"{name}_ref"] += float((x.double() ** 2).sum())
        for name, value in attention_errors(query[:, :, -queries:], keys, values, k_hat, v_hat).items():
            per[name].append(value)
    result = {"k_rel_mse": sums["k_err"] / sums["k_ref"], "v_rel_mse": sums["v_err"] / sums["v_ref"]}
    result.update({name: sum(v) / len(v) for name, v in per.items()})
    return result


def table(title: str, rows: dict[str, dict], bf16_bytes: tuple[float, float]) -> str:
    head = ["K:V", "B/token/layer teacher (x vs bf16)", "B/token/layer d128 (x vs bf16)", "K rel MSE", "V rel MSE",
            "attn out rel err", "top-8 overlap", "top-32 overlap"]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows.values():
        lines.append(
            f"| {r['label']} | {r['bytes_teacher']:.1f} ({bf16_bytes[0] / r['bytes_teacher']:.2f}x) "
            f"| {r['bytes_d128']:.1f} ({bf16_bytes[1] / r['bytes_d128']:.2f}x) | {r['k_rel_mse']:.4f} | {r['v_rel_mse']:.4f} "
            f"| {r['attn_out_rel_err']:.4f} | {r['top8_overlap']:.3f} | {r['top32_overlap']:.3f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/hydrahead-teacher-3m")
    parser.add_argument("--tasks", default="niah_single_1,niah_multikey_1,vt")
    parser.add_argument("--samples", type=int, default=4, help="prompts per task")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--synthetic-tokens", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=64, help="last queries of each prompt for the attention figures")
    parser.add_argument("--block", type=int, default=64, help="tokens quantized together")
    parser.add_argument("--pairings", default=PAIRINGS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    teacher, config = teacher_qkv(args.model, args.tasks.split(","), args.samples, args.length, args.seed)
    synthetic = synthetic_qkv(args.synthetic_tokens, args.seed)
    d, kv_heads = config.head_dim, config.num_key_value_heads
    results = {"teacher": {}, "synthetic": {}}
    for spec in args.pairings.split(","):
        keys, values = parse_cache_spec(spec)
        common = {"label": f"{keys.label}:{values.label}", "bytes_teacher": bytes_per_token(spec, d, kv_heads, args.block),
                  "bytes_d128": bytes_per_token(spec, 128, 8, args.block)}
        results["teacher"][spec] = {**common, **errors(spec, teacher, d, args.block, args.queries)}
        results["synthetic"][spec] = {**common, **errors(spec, synthetic, 128, args.block, args.queries)}
        print(f"  {spec}: done", flush=True)
    bf16 = (2 * 2 * d * kv_heads, 2 * 2 * 128 * 8)
    print(f"\n{len(teacher)} teacher (prompt, layer) pairs from {args.tasks} at {args.length} tokens; blocks of "
          f"{args.block}; {torch.get_num_threads()} threads; {time.perf_counter() - start:.0f} s\n")
    print(table(f"Teacher K/V/Q ({kv_heads} KV heads x head_dim {d}, real prompts)", results["teacher"], bf16))
    print()
    print(table(f"Synthetic, head_dim 128, 4 outlier key channels ({args.synthetic_tokens} tokens)",
                results["synthetic"], bf16))
    print("\nBytes: K + V of every KV head of one layer per token, scales included (teacher: 2 KV heads x 32; "
          "d128: 8 KV heads x 128, Qwen3-0.6B's shape); (x) = bf16's bytes / the format's")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
