"""All three methods from one head plan: the original, the hybrid, hybrid + 4-bit, hybrid + sparse, all three.

(A) `--part quality`: the shipped teacher (`--model`) and a trained hybrid of it (`--hybrid DIR`). Per variant:
KV bytes per token from the plan (exact; the ratio is to the original in bf16), the cache's measured bytes
after one prompt against the plan's count for that prompt, the share of KV a decode step reads, and the RULER
score (`--tasks`, `--limit` samples per task and length, seed 0) at every length, with a 95% interval per cell
(percentile bootstrap over the samples; for the mean over tasks, resampled within each task). The last table
holds the goal's test: all three minus the hybrid at every length, with a paired bootstrap interval (the
variants score the same samples).

(B) `--part speed`: a Qwen3-0.6B-shaped model with random weights (as benchmarks/hybrid_decode.py, `--layers`
of its 28 layers), a head-wise 7:1 hybrid of it at the trained hybrid's granularity (`--granularity`); per
variant the KV bytes per token and the decode-step time on a cache filled with random contents of each length,
each with its ratio to the original in the same run and its time over the bandwidth bound of bound.py.

The variants, all from one plan:
- original: the plain model, its own cache;
- hybrid: the hybrid's own plan (FA heads cached in the model's dtype, GDN heads' states);
- hybrid + 4-bit: the plan with `--kv_format` for every cached KV head (sink 4, window `--kv_window`, block 64);
- hybrid + sparse: the plan with decode roles and a budget of `--budget` (a token count or a share of the
  context). Roles: the hybrid plan's own if it has any; else (`--roles learn`, the default) learned on the
  original model with `train_roles` (what `hydrahead roles` runs, at its default target `--target`), or
  (`--roles scores --scores FILE`) the top KV heads of `hydrahead score`'s head scores;
- all three: formats and roles together.

    python benchmarks/plan_composition.py --part quality --hybrid runs/demo/long/model --limit 10
    python benchmarks/plan_composition.py --part speed --layers 4 --lengths 8192,32768
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import torch

from bound import bound_line, load_average, read_bandwidth, save_run, weight_bytes

from hydrahead.cache import cache_nbytes
from hydrahead.compat import cache_arg
from hydrahead.intervals import bootstrap, stratified_bootstrap
from hydrahead.plan import HeadPlan, ModelShape

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("original", "hybrid", "hybrid + 4-bit", "hybrid + sparse", "all three")


def variant_plans(own: HeadPlan, roles, kv_format: str, window: int, budget) -> dict[str, HeadPlan | None]:
    """The plan each variant decodes with (None: the plain original)."""
    quant = own.without_kv_formats().with_kv_formats(kv_format, window=window)
    sparse = dict(budget=budget)
    return {
        "original": None,
        "hybrid": own.without_kv_formats(),
        "hybrid + 4-bit": quant,
        "hybrid + sparse": own.without_kv_formats().with_roles(roles).with_decode(**sparse),
        "all three": quant.with_roles(roles).with_decode(**sparse),
    }


def describe_roles(plan: HeadPlan, roles) -> str:
    """The cached KV heads and their roles, as 'L0:0 R, L0:1 R, L3:1 S'."""
    return ", ".join(f"L{layer}:{kv} {roles[layer][kv][0].upper()}" for layer in range(plan.shape.num_layers)
                     for kv in plan.fa_kv_heads(layer))


def kv_only_bytes(cache) -> int:
    """Bytes of keys and values in a cache (GDN states apart)."""
    return cache_nbytes(cache) - sum(state.nbytes() for state in getattr(cache, "gdn", []))


# ---- (A) quality on the teacher and its trained hybrid --------------------------------------------------------


def per_sample(result, tasks, lengths) -> dict[tuple[str, int], list[float]]:
    """Scores 0-100 per (task, length), in sample order (the same samples for every variant: seed 0)."""
    out: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for r in result.records:
        out.setdefault((r["task"], r["length"]), []).append((r["index"], 100.0 * r["score"]))
    return {key: [s for _, s in sorted(v)] for key, v in out.items()}


def learn_roles(args, teacher, tokenizer, hybrid_plan: HeadPlan):
    """The decode roles for the hybrid: its plan's, else learned on the original, else from head scores."""
    if hybrid_plan.decode_roles is not None:
        return hybrid_plan.decode_roles, "the hybrid plan's own decode roles"
    if args.roles == "scores":
        from hydrahead.decoding import roles_from_scores
        from hydrahead.selection import Scores

        return roles_from_scores(Scores.load(args.scores), args.target), (
            f"the hybrid plan has none: top {args.target:g} of the free KV heads by the head scores of {args.scores}")
    from hydrahead.decoding import train_roles
    from hydrahead.decoding.train import RoleTrainingConfig

    start = time.perf_counter()
    result = train_roles(teacher, tokenizer, RoleTrainingConfig(target=args.target, budget=args.budget), progress=False)
    return result.roles, (f"the hybrid plan has none: learned on the original with train_roles (HardKuma, target "
                          f"{args.target:g}, budget {args.budget}, as `hydrahead roles`) in {time.perf_counter() - start:.0f} s")


def measured_bytes(model, plan, tokenizer, prompt: str, dtype) -> tuple[int, int, int]:
    """(tokens, measured KV bytes, the plan's count) after prefilling one prompt into the variant's cache."""
    from hydrahead.decoding import plan_decoding

    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    full = HeadPlan.full_attention(model.config)
    with torch.no_grad(), plan_decoding(model, plan, sparse=False) as run:
        cache = run(model)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_arg(cache))
        cache = out.past_key_values
    expected = (plan or full).kv_bytes(ids.shape[1], 1, dtype)
    return ids.shape[1], kv_only_bytes(cache), expected


def quality(args):
    from hydrahead.decoding import plan_decoding
    from hydrahead.evaluation import build_samples, evaluate
    from hydrahead.models import load_causal_lm
    from hydrahead.configuration import hybrid_spec

    tasks, lengths = args.tasks.split(","), [int(x) for x in args.lengths.split(",")]
    limits = dict(zip(lengths, [int(x) for x in args.limits.split(",")])) if args.limits else {}
    teacher, tokenizer = load_causal_lm(args.model)
    hybrid, _ = load_causal_lm(args.hybrid)
    own = hybrid_spec(hybrid.config)[0]
    sparse_wanted = {"hybrid + sparse", "all three"} & set(args.variants.split(","))
    roles, roles_from = learn_roles(args, teacher, tokenizer, own) if sparse_wanted else (
        [["retrieval"] * own.shape.num_kv_heads] * own.shape.num_layers, "not needed by these variants")
    plans = variant_plans(own, roles, args.kv_format, args.kv_window, args.budget)
    full = HeadPlan.full_attention(teacher.config)
    base_bf16 = full.kv_bytes_per_token(torch.bfloat16)
    print(f"teacher {args.model}; hybrid {args.hybrid} ({own.granularity} granularity, {own.ratio}, "
          f"{own.num_cached_kv} of {own.shape.num_layers * own.shape.num_kv_heads} KV heads cached)")
    print(f"roles: {roles_from}; cached KV heads: {describe_roles(own, roles)} (R retrieval, S sparse)")
    print(f"tasks {args.tasks}, seed 0, samples per task and length: "
          + ", ".join(f"{n}: {limits.get(n, args.limit)}" for n in lengths) + f"; {torch.get_num_threads()} threads")
    print(f"load average {load_average()} (start)", flush=True)
    prompt = build_samples(tokenizer, tasks[0], [lengths[0]], 1, 0)[0].prompt()
    rows = {}
    for name in args.variants.split(","):
        model, plan = (teacher, None) if name == "original" else (hybrid, plans[name])
        start = time.perf_counter()
        tokens, measured, expected = measured_bytes(model, plan, tokenizer, prompt, model.dtype)
        row = {"kv_bytes_per_token_bf16": (plan or full).kv_bytes_per_token(torch.bfloat16), "prompt_tokens": tokens,
               "measured_kv_bytes": measured, "plan_kv_bytes": expected, "samples": {}, "read_fraction": {}}
        for n in lengths:
            with plan_decoding(model, plan) as run:
                result = evaluate(model, tokenizer, args.tasks, [n], limits.get(n, args.limit), seed=0, progress=False,
                                  batch_size=args.batch_size, cache_factory=run)
            row["samples"].update({f"{t}@{n}": v for (t, _), v in per_sample(result, tasks, [n]).items()})
            row["read_fraction"][n] = run.state.stats.read_fraction if run.state is not None else 1.0
            print(f"  {name} @{n}: {sum(result.scores[t][n] for t in tasks) / len(tasks):.1f} "
                  f"({time.perf_counter() - start:.0f} s so far; load average {load_average()})", flush=True)
        row["seconds"] = time.perf_counter() - start
        rows[name] = row
        if args.json:  # after every variant, so that a run cut short keeps what it scored
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "roles": roles, "roles_from": roles_from, "load_average": load_average(),
                           "plan": own.to_dict(), "rows": rows}, f, indent=1)
    if set(rows) == set(VARIANTS):
        print_quality(args, rows, tasks, lengths, base_bf16, own)


def combine(args):
    """One table from the JSON files of runs that each scored some of the variants (`--variants`), e.g. in
    parallel processes: the samples are the same (seed 0), so the figures are those of one run."""
    runs = [json.load(open(path)) for path in args.combine.split(",")]
    rows = {}
    for run in runs:
        rows.update(run["rows"])
    missing = [v for v in VARIANTS if v not in rows]
    if missing:
        sys.exit(f"--combine: no run scored {', '.join(missing)}")
    first = runs[0]
    with_roles = [r for r in runs if r["roles_from"] != "not needed by these variants"]
    if any(r["roles"] != with_roles[0]["roles"] for r in with_roles):
        sys.exit("--combine: the runs decoded with different roles")
    roles_run = with_roles[0] if with_roles else first
    for key in ("model", "tasks", "lengths", "kv_format", "kv_window", "budget"):
        if any(r["args"][key] != first["args"][key] for r in runs):
            sys.exit(f"--combine: the runs differ in --{key}")
    # runs with more samples are cut to the fewest: sample i of a task and length is the same in every run
    # (tasks.generate seeds each sample by its index), so the first n are the same n samples
    fewest = {}
    for row in rows.values():
        for cell, values in row["samples"].items():
            fewest[cell] = min(fewest.get(cell, len(values)), len(values))
    cut = sorted({cell for row in rows.values() for cell, v in row["samples"].items() if len(v) > fewest[cell]})
    for row in rows.values():
        row["samples"] = {cell: v[: fewest[cell]] for cell, v in row["samples"].items()}
    # the original's row does not depend on the hybrid: a run of it alone may come from another hybrid's run
    hybrids = {r["args"]["hybrid"] for r in runs if set(r["rows"]) - {"original"}}
    if len(hybrids) > 1:
        sys.exit(f"--combine: the hybrid variants come from different hybrids: {sorted(hybrids)}")
    first = next(r for r in runs if set(r["rows"]) - {"original"})
    saved = argparse.Namespace(**first["args"])
    own = HeadPlan.from_dict(first["plan"])
    tasks, lengths = saved.tasks.split(","), [int(x) for x in saved.lengths.split(",")]
    for n, row in rows.items():
        row["read_fraction"] = {int(k): v for k, v in row["read_fraction"].items()}
    print(f"hybrid {first['args']['hybrid']}; combined from {args.combine}; roles: {roles_run['roles_from']}; cached KV heads: "
          f"{describe_roles(own, roles_run['roles'])}; load average at the end of each run: "
          + "; ".join(r["load_average"] for r in runs))
    lengths_ = [int(x) for x in first["args"]["lengths"].split(",")]
    per_length = {n: fewest[f"{first['args']['tasks'].split(',')[0]}@{n}"] for n in lengths_}
    print("samples per task and length: " + ", ".join(f"{n}: {k}" for n, k in per_length.items())
          + (f" (runs with more cut to their first samples in {len(cut)} cells)" if cut else ""))
    print_quality(saved, {v: rows[v] for v in VARIANTS}, tasks, lengths,
                  own.full_kv_bytes_per_token(torch.bfloat16), own)


def print_quality(args, rows, tasks, lengths, base_bf16, own):
    rng = random.Random(0)
    dtype = "float32"
    print(f"\nKV bytes per token: the plan's exact count (bf16 where not quantized), ratio to the original in bf16 "
          f"({base_bf16:,} B); measured = the cache after prefilling one {rows['original']['prompt_tokens']}-token "
          f"prompt (the model's {dtype}: sink and window in {dtype}) against the plan's count for it")
    print("| variant | KV B/token | x fewer than original bf16 | measured / plan (one prompt) | KV read per decode step |")
    print("|---|---:|---:|---|---|")
    for name, r in rows.items():
        read = ", ".join(f"{100 * r['read_fraction'][n]:.0f}%" for n in lengths)
        ok = "=" if r["measured_kv_bytes"] == r["plan_kv_bytes"] else "!="
        print(f"| {name} | {r['kv_bytes_per_token_bf16']:,.3f} | {base_bf16 / r['kv_bytes_per_token_bf16']:.2f}x | "
              f"{r['measured_kv_bytes']:,} {ok} {r['plan_kv_bytes']:,} | {read} |")
    print(f"(KV read per decode step: per length {', '.join(map(str, lengths))}, bytes of KV the attention reads / "
          "a dense step's, over the whole evaluation)")
    print("\nRULER score, mean [95% interval] per task and length (percentile bootstrap over samples; "
          "mean row: resampled within each task)")
    print("| variant | task | " + " | ".join(str(n) for n in lengths) + " |")
    print("|---|---|" + "---:|" * len(lengths))
    for name, r in rows.items():
        for t in tasks + ["mean"]:
            cells = []
            for n in lengths:
                if t == "mean":
                    groups = [r["samples"][f"{u}@{n}"] for u in tasks]
                    m, (lo, hi) = sum(sum(g) / len(g) for g in groups) / len(groups), stratified_bootstrap(groups, rng)
                else:
                    v = r["samples"][f"{t}@{n}"]
                    m, (lo, hi) = sum(v) / len(v), bootstrap(v, rng)
                cells.append(f"{m:.1f} [{lo:.0f}, {hi:.0f}]")
            label = f"**{t}**" if t == "mean" else t
            print(f"| {name if t == tasks[0] else ''} | {label} | " + " | ".join(cells) + " |")
    print("\nThe goal's test: all three minus the hybrid, mean over tasks, paired bootstrap 95% interval "
          "(the same samples resampled for both)")
    print("| length | hybrid | all three | difference [95%] | within 3 points |")
    print("|---:|---:|---:|---|---|")
    for n in lengths:
        a = [rows["all three"]["samples"][f"{t}@{n}"] for t in tasks]
        h = [rows["hybrid"]["samples"][f"{t}@{n}"] for t in tasks]
        diffs = [[x - y for x, y in zip(ga, gh)] for ga, gh in zip(a, h)]
        mh = sum(sum(g) / len(g) for g in h) / len(h)
        ma = sum(sum(g) / len(g) for g in a) / len(a)
        lo, hi = stratified_bootstrap(diffs, rng)
        # established when the whole interval lies within 3 points; the point estimate alone says less
        verdict = ("yes (interval)" if -3 <= lo and hi <= 3 else "no (interval)" if hi < -3 or lo > 3
                   else f"{'yes' if abs(ma - mh) <= 3 else 'no'} (point estimate; the interval spans 3)")
        print(f"| {n} | {mh:.1f} | {ma:.1f} | {ma - mh:+.1f} [{lo:+.1f}, {hi:+.1f}] | {verdict} |")
    reduction = base_bf16 / rows["all three"]["kv_bytes_per_token_bf16"]
    print(f"KV bytes: all three {rows['all three']['kv_bytes_per_token_bf16']:,.3f} B/token = {reduction:.2f}x fewer "
          f"than the original in bf16 (goal: 25x)")
    if own.granularity != "kv":
        kv_granular = HeadPlan(own.shape, [list(range(own.shape.group_size))] + [[]] * (own.shape.num_layers - 1), "kv")
        q = kv_granular.with_kv_formats(args.kv_format, window=args.kv_window)
        print(f"a 7:1 plan at KV granularity (one KV group FA: {kv_granular.kv_bytes_per_token(torch.bfloat16):,} B/token "
              f"in bf16) with {args.kv_format}: {q.kv_bytes_per_token():,.3f} B/token = "
              f"{base_bf16 / q.kv_bytes_per_token():.2f}x fewer (this table's hybrid is at query granularity)")
    print(f"load average {load_average()} (end)")


# ---- (B) speed on the Qwen3-0.6B-shaped model ------------------------------------------------------------------


def speed_plans(config, granularity: str, kv_format: str, window: int, budget, share: float):
    from hydrahead.decoding import random_roles

    layers = config.num_hidden_layers
    # head-wise 7:1 of 16 heads = 2 FA heads per layer, as in hybrid_decode.py
    own = (HeadPlan.from_config(config, [[0, 9]] * layers, "query") if granularity == "query"
           else HeadPlan.from_config(config, [[0, 1]] * layers, "kv"))
    roles = random_roles(ModelShape.of(config), share, seed=0)
    return own, roles, variant_plans(own, roles, kv_format, window, budget)


def filled(model, plan, length: int, dtype):
    """A cache as a prefill of `length` tokens would leave it, random contents (quantized where the plan says)."""
    from hydrahead.kv.cache import plan_cache

    c = model.config
    g = torch.Generator().manual_seed(0)
    cache = plan_cache(c, plan) if plan is not None else plan_cache(c, None)
    for layer in range(c.num_hidden_layers):
        attn = model.model.layers[layer].self_attn
        heads = c.num_key_value_heads if plan is None else len(plan.fa_kv_heads(layer))
        if heads:
            k = torch.randn(1, heads, length, c.head_dim, generator=g, dtype=dtype)
            cache.update(k, torch.randn(k.shape, generator=g, dtype=dtype), layer)
            del k
        if plan is not None and getattr(attn, "gdn", None) is not None:
            gd = attn.gdn
            cache.update_gdn_state(layer, conv=torch.randn(1, gd.conv.shape[0], gd.conv_size - 1, dtype=dtype),
                                   recurrent=torch.randn(1, gd.num_heads, c.head_dim, c.head_dim) * 0.01)
    if plan is not None:
        cache.advance(length)
    return cache


def speed(args):
    from hydrahead.attention import HybridOptions
    from hydrahead.convert import convert
    from hydrahead.decoding import plan_decoding
    from hydrahead.decode_linear import use_decode_linear
    from hydrahead.kv import use_blockwise_attention

    sys.path.insert(0, str(Path(__file__).parent))
    from hybrid_decode import decode_ms, qwen3_06b_like

    from transformers import Qwen3ForCausalLM

    dtype = getattr(torch, args.dtype)
    lengths = [int(x) for x in args.lengths.split(",")]
    config = qwen3_06b_like(args.layers)
    own, roles, plans = speed_plans(config, args.granularity, args.kv_format, args.kv_window, args.budget, args.share)
    full = HeadPlan.full_attention(config)
    print(f"Qwen3-0.6B-like, {args.layers} of 28 layers, random weights, {args.dtype}, {torch.get_num_threads()} threads; "
          f"hybrid: head-wise 7:1, {args.granularity} granularity ({own.num_cached_kv} of {args.layers * 8} KV heads cached); "
          f"4-bit {args.kv_format} (window {args.kv_window}); sparse budget {args.budget}, roles: layer 0 + "
          f"{args.share:g} of the other KV heads at random (seed 0); cached: {describe_roles(own, roles)}")
    bandwidth = read_bandwidth()
    print(bound_line(bandwidth), flush=True)
    torch.manual_seed(0)
    original = Qwen3ForCausalLM(copy.deepcopy(config)).to(dtype).eval()
    # the original at its best too: hydrahead's attention (a decode step reads its KVCache once, no GQA copy)
    use_blockwise_attention(original)
    use_decode_linear(original)  # as the hybrid's products are
    torch.manual_seed(0)
    hybrid = convert(Qwen3ForCausalLM(copy.deepcopy(config)).to(dtype).eval(), own,
                     HybridOptions(logscale_length=config.max_position_embeddings), inplace=True).eval()
    results = {}
    for name in VARIANTS:
        model, plan = (original, None) if name == "original" else (hybrid, plans[name])
        entry = {"kv_bytes_per_token_bf16": (plan or full).kv_bytes_per_token(torch.bfloat16), "decode_ms": {},
                 "step_bytes": {}, "read_fraction": {}}
        for n in lengths:
            with plan_decoding(model, plan) as run:
                cache = filled(model, plan, n, dtype)
                kv = kv_only_bytes(cache)
                entry["decode_ms"][n] = decode_ms(model, cache, n, args.repeats)
                frac = run.state.stats.read_fraction if run.state is not None else 1.0
            entry["read_fraction"][n] = frac
            # the bytes a step must read: the weights, the KV it attends to, the GDN states
            entry["step_bytes"][n] = weight_bytes(model) + kv * frac + (cache_nbytes(cache) - kv)
            del cache
        results[name] = entry
        print(f"  {name}: done (load average {load_average()})", flush=True)
    base = results["original"]
    full_bf16 = full.kv_bytes_per_token(torch.bfloat16)
    header = ["variant", "KV B/token (x fewer)"] + [f"decode ms @{n // 1024}K (x faster; /bound; KV read)" for n in lengths]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, e in results.items():
        cells = [name, f"{e['kv_bytes_per_token_bf16']:,.1f} ({full_bf16 / e['kv_bytes_per_token_bf16']:.2f}x)"]
        cells += [f"{e['decode_ms'][n]:.1f} ({base['decode_ms'][n] / e['decode_ms'][n]:.2f}x; "
                  f"{e['decode_ms'][n] / (e['step_bytes'][n] / bandwidth * 1e3):.1f}x; {100 * e['read_fraction'][n]:.0f}%)"
                  for n in lengths]
        print("| " + " | ".join(cells) + " |")
    print(f"KV B/token: all {args.layers} layers, bf16 where not quantized (x fewer than the original in bf16); (x faster) = "
          "the original's step time over this one's, same run; /bound = time over the bytes the step must read (weights, "
          "the KV it attends to, GDN states, in the run's dtype) at the bandwidth measured above; KV read = bytes of KV "
          "attended / a dense step's")
    print(bound_line(bandwidth) + " (after the run)")
    save_run(args.json, args, bandwidth, results)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["quality", "speed"], required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="quality: a subset, for runs in parallel")
    parser.add_argument("--combine", help="quality: print the table from these --json files (comma-separated)")
    parser.add_argument("--model", default=str(ROOT / "models" / "hydrahead-teacher-3m"))
    parser.add_argument("--hybrid", help="a trained hybrid of --model (quality)")
    parser.add_argument("--tasks", default="niah_single_1,niah_multikey_1,niah_multivalue,vt")
    parser.add_argument("--lengths", default=None, help="quality: 512,1024,2048,4096,8192; speed: 8192,32768")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--limits", help="samples per task for each length (a list matching --lengths)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--kv_format", default="tq4:int4")
    parser.add_argument("--kv_window", type=int, default=128)
    parser.add_argument("--budget", default="0.125", help="sparse decoding budget: tokens, or a share of the context")
    parser.add_argument("--roles", choices=["learn", "scores"], default="learn",
                        help="roles when the hybrid's plan has none")
    parser.add_argument("--scores", help="head scores for --roles scores")
    parser.add_argument("--target", type=float, default=0.1, help="retrieval share of the free KV heads")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--granularity", choices=["query", "kv"], default="query")
    parser.add_argument("--share", type=float, default=0.1, help="speed: retrieval share of the KV heads of layers 1..")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    args.budget = float(args.budget) if "." in args.budget else int(args.budget)
    if args.part == "quality" and args.combine:
        combine(args)
    elif args.part == "quality":
        unknown = set(args.variants.split(",")) - set(VARIANTS)
        if unknown:
            parser.error(f"unknown variant {sorted(unknown)[0]!r}; choose from {', '.join(VARIANTS)}")
        if not args.hybrid:
            parser.error("--part quality needs --hybrid DIR (a trained hybrid of --model)")
        args.lengths = args.lengths or "512,1024,2048,4096,8192"
        quality(args)
    else:
        args.lengths = args.lengths or "8192,32768"
        speed(args)


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
