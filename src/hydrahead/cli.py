"""The `hydrahead` command line."""

from __future__ import annotations

import argparse
import sys

from .errors import HydraheadError


def _eval(args) -> int:
    from .evaluation import (
        DEFAULT_DEPTHS,
        build_samples,
        header_line,
        parse_depths,
        parse_lengths,
        score_samples,
        write_results,
    )
    from .models import load_model, load_tokenizer
    from .outputs import check_dir_writable
    from .tasks import read_jsonl

    if args.data is None and args.tasks is None:
        raise HydraheadError("give --tasks (generated data) or --data FILE.jsonl (a RULER-format file)")
    _check_data_flags(args)
    if args.limit is not None and args.limit <= 0:
        raise HydraheadError(f"--limit must be positive, got {args.limit}")
    if args.batch_size < 1:
        raise HydraheadError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.output_path:  # found now, not as a traceback after the whole evaluation
        check_dir_writable(args.output_path, "--output_path")
    cache_factory = _kv_factory(args)
    from .decoding.cli import describe, sparse_config, sparse_context

    sparse = sparse_config(args)
    depths = parse_depths(args.depths) if args.depths else (list(DEFAULT_DEPTHS) if args.plot else None)
    tokenizer = load_tokenizer(args.model)  # samples are built (and bad input found) before the model loads
    if args.data is not None:
        samples = read_jsonl(args.data)
        if args.limit:
            samples = samples[: args.limit]
        config = {"data": str(args.data), "limit": args.limit, "seed": args.seed, "batch_size": args.batch_size,
                  "tasks": sorted({s.task for s in samples})}
    else:
        lengths = parse_lengths(args.lengths or "512")
        samples = build_samples(tokenizer, args.tasks, lengths, args.limit or 50, args.seed, depths)
        config = {"tasks": args.tasks.split(","), "lengths": lengths, "limit": args.limit or 50, "seed": args.seed,
                  "depths": depths, "batch_size": args.batch_size}
    model = load_model(args.model)
    config.update(model=str(args.model), native_length=getattr(model.config, "max_position_embeddings", None))
    if cache_factory is not None:
        config["kv_cache"] = cache_factory.describe()
    if sparse is not None:
        config["sparse_decode"] = {**sparse.to_dict(), "roles": args.roles}
    with sparse_context(model, args, sparse) as state:
        result = score_samples(model, tokenizer, samples, args.batch_size, progress=not args.quiet, metric=args.metric,
                               cache_factory=cache_factory)
    result.config = config
    result.overall_column = args.data is not None  # a file is the unit: its score beside its lengths
    print(header_line(str(args.model), result))
    if cache_factory is not None:
        print(f"kv cache: {_kv_line(cache_factory.describe())}")
    if sparse is not None:
        print(describe(sparse, args, state))
    print(result.table())
    first_task, per_length = next(iter(result.prefill_tokens_per_s.items()))  # all tasks are in metrics.json
    speed = ", ".join(f"{n}: {v:,.0f}" for n, v in sorted(per_length.items()))
    print(f"prefill tokens/s ({first_task}): {speed}")
    if args.output_path:
        folder = write_results(result, args.output_path, name=_run_name(args.model), plot=args.plot)
        print(f"results: {folder}")
        if args.plot:
            for png in sorted(folder.glob("*.png")):
                print(f"plot: {png}")
    return 0


def _check_data_flags(args) -> None:
    """--data brings its own tasks, lengths and depths: a flag that would be silently ignored is an error."""
    if args.data is None:
        return
    ignored = [flag for flag in ("--tasks", "--lengths", "--depths") if getattr(args, flag[2:]) is not None]
    if ignored:
        raise HydraheadError(f"--data takes its tasks, lengths and depths from the file; {', '.join(ignored)} "
                             f"would be ignored: drop {'it' if len(ignored) == 1 else 'them'}")


def _convert(args) -> int:
    import time

    from .atomic import atomic_dir
    from .attention import HybridOptions
    from .convert import convert, save
    from .models import load_model, load_tokenizer
    from .outputs import check_model_out
    from .plan import HeadPlan

    plan = HeadPlan.load(args.plan)
    tokenizer = load_tokenizer(args.model)
    out = check_model_out(args.out, args.model)
    start = time.perf_counter()
    model = load_model(args.model)
    options = HybridOptions(
        fusion=args.fusion,
        fa_position=args.fa_position,
        gdn_mha=not args.gdn_shared_kv,
        conv_size=args.conv_size,
        logscale_length=args.logscale_length or getattr(model.config, "max_position_embeddings", 4096),
    )
    convert(model, plan, options)
    with atomic_dir(out) as partial:  # a killed convert leaves OUT.partial, never a model without weights
        save(model, partial, tokenizer)
    params = sum(p.numel() for p in model.parameters())
    print(plan.summary())
    print(f"options: {options.to_dict()}")
    print(f"wrote {out} ({params / 1e6:.2f}M parameters) in {time.perf_counter() - start:.1f} s")
    return 0


def _generate(args) -> int:
    import time

    import torch

    from .cache import cache_nbytes
    from .convert import is_hybrid
    from .models import load_model, load_tokenizer

    if (args.prompt is None) == (args.prompt_file is None):
        raise HydraheadError("give exactly one of --prompt TEXT or --prompt_file FILE")
    if args.max_new_tokens <= 0:
        raise HydraheadError(f"--max_new_tokens must be positive, got {args.max_new_tokens}")
    cache_factory = _kv_factory(args)
    from .decoding.cli import describe, sparse_config, sparse_context

    sparse = sparse_config(args)
    prompt = args.prompt if args.prompt is not None else _read_text(args.prompt_file)
    if not prompt.strip():
        raise HydraheadError("the prompt is empty" + (f" ({args.prompt_file})" if args.prompt_file else ""))
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise HydraheadError("the prompt has no tokens with this model's tokenizer")
    _warn_long_prompt(ids.shape[1], model.config)
    with torch.no_grad(), sparse_context(model, args, sparse) as state:
        start = time.perf_counter()
        cache = cache_factory(model) if cache_factory is not None else None
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True,
                             past_key_values=cache)
        seconds = time.perf_counter() - start
    new = out.sequences[0, ids.shape[1]:]
    print(tokenizer.decode(new, skip_special_tokens=True))
    kind = "hybrid" if is_hybrid(model) else "original"
    print(f"[{kind} model: {ids.shape[1]} prompt tokens, {len(new)} new tokens in {seconds:.2f} s; "
          f"cache {cache_nbytes(out.past_key_values) / 1024:.1f} KiB"
          + (f"; kv cache {_kv_line(cache_factory.describe())}" if cache_factory is not None else "") + "]",
          file=sys.stderr)
    if sparse is not None:
        print(f"[{describe(sparse, args, state)}]", file=sys.stderr)
    return 0


def _score(args) -> int:
    from pathlib import Path

    from .models import load_model, load_tokenizer
    from .outputs import check_file_writable
    from .plots import plot_head_scores
    from .selection import ScoreConfig, SelectionError, partial_path, score_heads
    from .selection.scores import parse_weights
    from .selection.sweep import read_partial

    config = ScoreConfig(
        behaviours=[b.strip() for b in args.behaviours.split(",") if b.strip()], length=args.length,
        num_pairs=args.num_pairs, seed=args.seed, direction=args.direction, receivers=args.receivers,
        attribution_top=args.attribution_top, retrieval_samples=args.retrieval_samples, max_tokens=args.max_tokens,
    )
    config.check()
    weights = parse_weights(args.weights)
    unknown = sorted(set(weights) - set(config.behaviours))
    if unknown:
        raise SelectionError(f"--weights names {unknown[0]!r}, which is not among --behaviours")
    out = check_file_writable(args.out, "--out", "scores.json")
    if args.plot:
        check_file_writable(args.plot, "--plot", "scores.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out)
    if partial.is_file():
        done = sum(len(s) for b in read_partial(partial).get("effects", {}).values() for s in b.values())
        print(f"resuming from {partial} ({done} units already scored)", file=sys.stderr)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    try:
        scores = score_heads(model, tokenizer, config, str(args.model), partial, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"hydrahead: interrupted; the scores so far are in {partial}; run the same command to resume",
              file=sys.stderr)
        return 130
    scores.weights = weights
    scores.save(out)
    partial.unlink(missing_ok=True)
    print("| behaviour | clean LD | corrupted LD | top receivers (effect) | top senders (path effect) |")
    print("|---|---:|---:|---|---|")
    for name, b in scores.behaviours.items():
        rec = ", ".join(f"L{l}H{h} {b.activation[l, h]:.2f}" for l, h in b.receivers)
        order = sorted(((l, h) for l in range(b.path.shape[0]) for h in range(b.path.shape[1])),
                       key=lambda lh: -abs(b.path[lh]))[:3]
        send = ", ".join(f"L{l}H{h} {b.path[l, h]:.2f}" for l, h in order)
        print(f"| {name} | {b.clean_ld:.2f} | {b.corrupt_ld:.2f} | {rec} | {send} |")
    ranking = scores.ranking()
    print("fused ranking: " + " ".join(f"L{l}H{h}" for l, h in ranking[: min(12, len(ranking))]) + " ...")
    print(f"wrote {out} in {scores.seconds:.1f} s")
    if args.plot:
        print(f"plot: {plot_head_scores(scores, Path(args.plot))}")
    return 0


def _plan(args) -> int:
    from .models import _model_dir
    from .outputs import check_file_writable
    from .plan import ModelShape
    from .selection import Scores, SelectionError, make_plan
    from .selection.scores import parse_weights

    if args.scores is None and args.model is None:
        raise SelectionError("give --scores FILE (from `hydrahead score`) or, for layerwise / random plans, --model DIR")
    check_file_writable(args.out, "--out", "plan.json")
    scores = Scores.load(args.scores) if args.scores else None
    if scores is not None and args.weights:
        scores.weights = parse_weights(args.weights)
    if scores is not None:
        shape = scores.shape
    else:
        from transformers import AutoConfig

        shape = ModelShape.of(AutoConfig.from_pretrained(_model_dir(args.model), local_files_only=True))
    ratio = args.ratio or (None if args.kv_budget else "7:1")
    plan = make_plan(shape, args.strategy, ratio, args.granularity, args.kv_budget, args.dtype, scores,
                     args.per_layer, args.seed)
    if args.scores:
        plan.meta["scores"] = str(args.scores)
    out = plan.save(args.out)
    print(plan.summary(args.dtype))
    print(f"wrote {out}")
    return 0


def _ablate(args) -> int:
    import json

    from .atomic import final_of, new_results_dir
    from .models import load_model, load_tokenizer
    from .outputs import check_dir_writable
    from .plots import plot_ablation
    from .selection import Scores, SelectionError, ablation_curve

    try:
        ks = sorted({int(k) for k in args.ks.split(",") if k.strip()})
    except ValueError:
        raise SelectionError(f"--ks must be comma-separated head counts, e.g. 1,2,4,8; got {args.ks!r}") from None
    if not ks:
        raise SelectionError("--ks is empty; give head counts, e.g. 1,2,4,8")
    if args.output_path:
        check_dir_writable(args.output_path, "--output_path")
    scores = Scores.load(args.scores)
    total = scores.shape.num_layers * scores.shape.num_heads
    if ks[0] < 1 or ks[-1] > total:
        raise SelectionError(f"--ks must lie in 1..{total} (the model's query heads), got {args.ks}")
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    from .plan import ModelShape

    if ModelShape.of(model.config) != scores.shape:
        raise SelectionError(f"{args.scores} scores a model with {scores.shape.describe()}, not {args.model}")
    curve = ablation_curve(model, tokenizer, scores.ranking(), ks, args.random_seeds, args.task, args.length,
                           args.limit, args.seed, progress=not args.quiet)
    print(f"{args.task} at {args.length} tokens, {args.limit} samples, mean ablation of {args.model}")
    print(curve.table())
    if args.output_path:
        with new_results_dir(args.output_path, _run_name(args.model)) as partial:  # all or nothing
            (partial / "ablation.json").write_text(json.dumps(vars(curve), indent=1))
            (partial / "ablation.md").write_text(curve.table() + "\n")
            plot_ablation(curve, partial / "ablation.png")
        folder = final_of(partial)
        print(f"results: {folder}")
        print(f"plot: {folder / 'ablation.png'}")
    return 0


def _distill(args) -> int:
    import os

    import yaml

    from .resume import parse_changes
    from .transfer import TransferError, load_config, train_stage
    from .transfer.checkpoint import CHANGEABLE

    allowed = parse_changes(args.change_on_resume, CHANGEABLE, TransferError)
    overrides = {k: getattr(args, k) for k in (
        "stage", "teacher", "plan", "init", "out", "steps", "seq_len", "batch_size", "micro_batch", "lr", "warmup",
        "seed", "checkpoint_every", "max_minutes", "parallel")}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise HydraheadError(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    config = load_config(args.config, overrides)
    model_dir = train_stage(config, progress=not args.quiet, change_on_resume=allowed)
    if model_dir is None:
        print(f"stopped early with a checkpoint in {config.out}/training; run the same command to resume")
        return 0
    if os.environ.get("RANK", "0") == "0":
        print(f"stage {config.stage}: {config.steps} steps; hybrid written to {model_dir}")
    return 0


def _pipeline(args) -> int:
    from .transfer.pipeline import PipelineConfig, run_pipeline

    settings = {k: getattr(args, k) for k in ("teacher", "out", "ratio", "granularity", "limit", "seed",
                                              "align_steps", "distill_steps", "long_steps")}
    settings = {k: v for k, v in settings.items() if v is not None}
    cfg = PipelineConfig.quick(**settings) if args.quick else PipelineConfig(**settings)
    run_pipeline(cfg, args.results, progress=not args.quiet)
    return 0


def _kv_factory(args):
    """The quantized KV cache of --kv-format as a cache factory (None without it), checked before any model loads."""
    sizes = {"window": args.kv_window, "sink": args.kv_sink, "block_size": args.kv_block}
    if args.kv_format is None:
        given = [f"--kv-{name.split('_')[0]}" for name, value in sizes.items() if value is not None]
        if given:
            raise HydraheadError(f"{given[0]} needs --kv-format")
        return None
    from .kv import KVCacheFactory

    return KVCacheFactory(args.kv_format, **{name: value for name, value in sizes.items() if value is not None})


def _kv_line(kv: dict) -> str:
    return f"{kv['kv_format']} (sink {kv['sink']}, window {kv['window']}, block {kv['block_size']})"


def _add_kv_args(parser) -> None:
    parser.add_argument("--kv-format", "--kv_format", dest="kv_format",
                        help="quantized KV cache, KEYS:VALUES formats, e.g. tq4:int4, fp8, bf16, int4-token "
                             "(formats: bf16 fp8 int4 mxfp4 nvfp4 tq4)")
    parser.add_argument("--kv-window", "--kv_window", dest="kv_window", type=int,
                        help="recent tokens kept in high precision (default 128)")
    parser.add_argument("--kv-sink", "--kv_sink", dest="kv_sink", type=int,
                        help="first tokens kept in high precision (default 4)")
    parser.add_argument("--kv-block", "--kv_block", dest="kv_block", type=int,
                        help="tokens quantized together, a multiple of 32 (default 64)")


def _read_text(path) -> str:
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise HydraheadError(f"prompt file {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HydraheadError(f"prompt file {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None


def _warn_long_prompt(tokens: int, config) -> None:
    """A prompt beyond the model's positions still runs (length extrapolation is what hydrahead measures),
    but the user should know the output may be meaningless."""
    native = getattr(config, "max_position_embeddings", None)
    if native and tokens > native:
        print(f"hydrahead: warning: the prompt has {tokens} tokens, {tokens / native:.1f}x the model's {native} "
              "positions (max_position_embeddings); expect degraded output", file=sys.stderr)


def _run_name(model_path) -> str:
    from pathlib import Path

    return Path(model_path).resolve().name or "model"


def _teacher_train(args) -> int:
    from dataclasses import fields

    from .resume import parse_changes
    from .teacher.train import CHANGEABLE, PRESETS, TeacherConfig, TeacherError, train

    allowed = parse_changes(args.change_on_resume, CHANGEABLE, TeacherError)
    overrides = {f.name: getattr(args, f.name) for f in fields(TeacherConfig) if getattr(args, f.name, None) is not None}
    cfg = TeacherConfig(**{**PRESETS[args.preset], **overrides})
    out = train(args.out, cfg, max_minutes=args.max_minutes, progress=not args.quiet, change_on_resume=allowed)
    if out is not None:
        print(f"teacher written to {out}")
    return 0


def _tasks_list(args) -> int:
    from .tasks import TASKS

    for name, cls in sorted(TASKS.items()):
        print(f"{name:18s} {cls.metric:17s} {cls.description}")
    return 0


def _tasks_generate(args) -> int:
    from transformers import AutoTokenizer

    from .tasks import generate, write_jsonl

    from .outputs import check_file_writable

    check_file_writable(args.out, "--out", f"{args.task}.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
    samples = generate(args.task, tokenizer, args.length, args.num_samples, seed=args.seed, depth=args.depth)
    write_jsonl(samples, args.out)
    print(f"wrote {len(samples)} samples of {args.task} at {args.length} tokens to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hydrahead", description="Head-wise long-context tools for HF causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="evaluate a local HF causal LM on RULER-style tasks")
    ev.add_argument("--model", required=True, help="a local HF model directory")
    ev.add_argument("--tasks", help="comma-separated task names (see `hydrahead tasks list`)")
    ev.add_argument("--data", help="a RULER-format JSONL file instead of generated tasks")
    ev.add_argument("--lengths", help="comma-separated context lengths in tokens (default 512)")
    ev.add_argument("--limit", type=int, default=None, help="samples per task and length (default 50)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--depths", help="needle depths in %% for NIAH tasks, e.g. 0,50,100")
    ev.add_argument("--batch_size", type=int, default=8)
    ev.add_argument("--metric", choices=["string_match_all", "string_match_part"], help="override the task's metric")
    ev.add_argument("--output_path", help="a folder; each run writes a new subfolder")
    ev.add_argument("--plot", action="store_true", help="write accuracy-vs-length and depth-heatmap PNGs")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_kv_args(ev)
    from .decoding.cli import add_roles_parser, add_sparse_args

    add_sparse_args(ev)
    ev.set_defaults(func=_eval)

    cv = sub.add_parser("convert", help="convert a Qwen3 / Llama model into a head-wise hybrid following a plan")
    cv.add_argument("--model", required=True, help="a local HF model directory")
    cv.add_argument("--plan", required=True, help="a head plan JSON file")
    cv.add_argument("--out", required=True, help="the hybrid's output directory")
    cv.add_argument("--fusion", default="scale", choices=["scale", "concat", "gate"])
    cv.add_argument("--fa_position", default="nope_logscale", choices=["nope_logscale", "rope"])
    cv.add_argument("--gdn_shared_kv", action="store_true", help="GDN heads share their KV head's k/v (not MHA-like)")
    cv.add_argument("--conv_size", type=int, default=4)
    cv.add_argument("--logscale_length", type=int, help="keys before the FA query scale grows (default: max_position_embeddings)")
    cv.set_defaults(func=_convert)

    gn = sub.add_parser("generate", help="greedy continuation of a prompt (original or hybrid model)")
    gn.add_argument("--model", required=True, help="a local HF model directory (original or hybrid)")
    gn.add_argument("--prompt", help="the prompt text")
    gn.add_argument("--prompt_file", help="a file holding the prompt")
    gn.add_argument("--max_new_tokens", type=int, default=32)
    _add_kv_args(gn)
    add_sparse_args(gn)
    gn.set_defaults(func=_generate)
    add_roles_parser(sub)

    sc = sub.add_parser("score", help="score every attention head by activation and path patching")
    sc.add_argument("--model", required=True, help="a local HF model directory (the original Transformer)")
    sc.add_argument("--behaviours", "--behaviors", default="retrieval,multikey,induction",
                    help="comma-separated: retrieval, multikey, induction, vt")
    sc.add_argument("--length", type=int, default=512, help="prompt length in tokens")
    sc.add_argument("--num_pairs", "--num-pairs", type=int, default=8, help="clean / corrupted pairs per behaviour")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--direction", default="denoise", choices=["denoise", "noise"],
                    help="denoise: clean heads into the corrupted run; noise: the reverse")
    sc.add_argument("--receivers", type=int, default=4, help="top heads that path patching traces back from")
    sc.add_argument("--attribution_top", "--attribution-top", type=int,
                    help="estimate every head by attribution patching, then really patch only its top K")
    sc.add_argument("--retrieval_samples", "--retrieval-samples", type=int, default=8,
                    help="NIAH samples for the retrieval-score baseline (0 skips it)")
    sc.add_argument("--weights", help="behaviour weights for the fused ranking, e.g. retrieval=2,induction=1")
    sc.add_argument("--max_tokens", "--max-tokens", type=int, default=16384, help="tokens per batched forward")
    sc.add_argument("--out", required=True, help="the scores JSON file")
    sc.add_argument("--plot", help="a PNG of layer x head heatmaps")
    sc.add_argument("--quiet", action="store_true")
    sc.set_defaults(func=_score)

    pl = sub.add_parser("plan", help="a head plan from scores (or a layer-wise / random baseline)")
    pl.add_argument("--scores", help="a scores JSON file from `hydrahead score`")
    pl.add_argument("--model", help="a model directory (for layerwise / random plans without scores)")
    pl.add_argument("--strategy", default="interp", choices=["interp", "retrieval_score", "layerwise", "random"])
    pl.add_argument("--ratio", help="GDN:FA units, e.g. 7:1 (default 7:1 unless --kv-budget is given)")
    pl.add_argument("--granularity", default="query", choices=["query", "kv"])
    pl.add_argument("--kv_budget", "--kv-budget", type=int, help="KV cache bytes per token for the whole model")
    pl.add_argument("--dtype", default="bfloat16", help="KV dtype for the budget and the summary")
    pl.add_argument("--per_layer", "--per-layer", action="store_true", help="the same number of FA units in every layer")
    pl.add_argument("--weights", help="re-weight the behaviours of the fused ranking, e.g. retrieval=2")
    pl.add_argument("--seed", type=int, default=0, help="for --strategy random")
    pl.add_argument("--out", required=True, help="the plan JSON file")
    pl.set_defaults(func=_plan)

    ab = sub.add_parser("ablate", help="mean-ablate the top-k heads by score vs k random heads")
    ab.add_argument("--model", required=True)
    ab.add_argument("--scores", required=True)
    ab.add_argument("--task", default="niah_single_1")
    ab.add_argument("--length", type=int, default=512)
    ab.add_argument("--limit", type=int, default=50)
    ab.add_argument("--ks", default="1,2,4,8")
    ab.add_argument("--random_seeds", "--random-seeds", type=int, default=3)
    ab.add_argument("--seed", type=int, default=0)
    ab.add_argument("--output_path", help="a folder; each run writes a new subfolder")
    ab.add_argument("--quiet", action="store_true")
    ab.set_defaults(func=_ablate)

    ds = sub.add_parser("distill", help="one transfer stage (align | distill | long) of a hybrid; torchrun-ready")
    ds.add_argument("--config", help="a YAML file of TransferConfig keys; the flags below override it")
    ds.add_argument("--stage", choices=["align", "distill", "long"])
    ds.add_argument("--teacher", help="the original model directory")
    ds.add_argument("--plan", help="convert the teacher with this head plan to make the student")
    ds.add_argument("--init", help="or start from this hybrid directory (the previous stage's output)")
    ds.add_argument("--out", help="the run directory (checkpoints, log, the trained hybrid in OUT/model)")
    ds.add_argument("--steps", type=int)
    ds.add_argument("--seq_len", "--seq-len", type=int)
    ds.add_argument("--batch_size", "--batch-size", type=int, help="sequences per optimizer step, all processes")
    ds.add_argument("--micro_batch", "--micro-batch", type=int, help="sequences per forward in one process")
    ds.add_argument("--lr", type=float)
    ds.add_argument("--warmup", type=int)
    ds.add_argument("--seed", type=int)
    ds.add_argument("--checkpoint_every", "--checkpoint-every", type=int)
    ds.add_argument("--max_minutes", "--max-minutes", type=float, help="stop with a checkpoint; rerun to resume")
    ds.add_argument("--parallel", choices=["auto", "ddp", "fsdp"],
                    help="under torchrun: a replica per process (ddp) or sharded (fsdp); auto: fsdp on GPUs, else ddp")
    ds.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other config key, e.g. --set kl_weight=2")
    ds.add_argument("--change_on_resume", "--change-on-resume", metavar="KEYS",
                    help="settings that may differ from the checkpoint's on purpose, e.g. lr after a divergence or "
                         "more steps (recorded in summary.json); otherwise a changed setting is refused")
    ds.add_argument("--quiet", action="store_true")
    ds.set_defaults(func=_distill)

    pp = sub.add_parser("pipeline", help="score -> plan -> convert -> align -> distill -> long -> evaluate -> report")
    pp.add_argument("--teacher", default="models/hydrahead-teacher-3m", help="the original model directory")
    pp.add_argument("--out", default="runs/pipeline", help="the run directory (finished steps are reused)")
    pp.add_argument("--results", default="results/pipeline", help="a folder; each run writes a new report folder")
    pp.add_argument("--quick", action="store_true", help="a few minutes: fewer pairs, steps, lengths and samples")
    pp.add_argument("--ratio")
    pp.add_argument("--granularity", choices=["query", "kv"])
    pp.add_argument("--align_steps", "--align-steps", type=int)
    pp.add_argument("--distill_steps", "--distill-steps", type=int)
    pp.add_argument("--long_steps", "--long-steps", type=int)
    pp.add_argument("--limit", type=int, help="evaluation samples per task and length")
    pp.add_argument("--seed", type=int)
    pp.add_argument("--quiet", action="store_true")
    pp.set_defaults(func=_pipeline)

    teacher = sub.add_parser("teacher", help="the small teacher model").add_subparsers(dest="teacher_command", required=True)
    tr = teacher.add_parser("train", help="train the teacher from scratch (resumes from OUT/training/checkpoint)")
    tr.add_argument("--out", required=True)
    tr.add_argument("--preset", default="teacher-3m", choices=["teacher-3m", "teacher-8l"],
                    help="a named configuration (flags below override it): the shipped 4-layer teacher or an 8-layer one")
    tr.add_argument("--steps", type=int)
    tr.add_argument("--tokens_per_batch", type=int)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--seed", type=int)
    tr.add_argument("--hidden_size", type=int)
    tr.add_argument("--num_layers", type=int)
    tr.add_argument("--native_length", type=int)
    tr.add_argument("--eval_every", type=int)
    tr.add_argument("--checkpoint_every", type=int)
    tr.add_argument("--max_minutes", type=float, help="stop (with a checkpoint) after this long; run again to resume")
    tr.add_argument("--change_on_resume", "--change-on-resume", metavar="KEYS",
                    help="settings that may differ from the checkpoint's on purpose, e.g. lr after a divergence "
                         "(recorded in training_summary.json); otherwise a changed setting is refused")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=_teacher_train)

    tasks = sub.add_parser("tasks", help="list or generate tasks").add_subparsers(dest="tasks_command", required=True)
    tasks.add_parser("list", help="the registered tasks").set_defaults(func=_tasks_list)
    gen = tasks.add_parser("generate", help="write a RULER-format JSONL file")
    gen.add_argument("--tokenizer", required=True, help="a local tokenizer or model directory")
    gen.add_argument("--task", required=True)
    gen.add_argument("--length", type=int, required=True)
    gen.add_argument("--num_samples", type=int, default=50)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--depth", type=float)
    gen.add_argument("--out", required=True)
    gen.set_defaults(func=_tasks_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HydraheadError as e:
        print(f"hydrahead: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hydrahead: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
