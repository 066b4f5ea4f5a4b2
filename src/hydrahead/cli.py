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
    from .selfcheck import check_cached_decoding
    from .tasks import read_jsonl

    _kv_checks(args)  # the other arguments were checked by cli_checks.check_eval
    from .decoding.cli import describe, kv_line, setup_from_args
    from .decoding.run import run_setup

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
    check_cached_decoding(model)  # a cache that is silently not used would make every score noise
    setup = setup_from_args(model.config, args)
    config.update(model=str(args.model), native_length=getattr(model.config, "max_position_embeddings", None))
    described = setup.describe()
    if args.plan is not None:
        config["plan"] = str(args.plan)
    if described["kv_cache"] is not None:
        config["kv_cache"] = described["kv_cache"]
    if setup.sparse is not None:
        config["sparse_decode"] = {**setup.sparse.to_dict(), "roles": args.roles or args.plan or "model plan"}
    with run_setup(model, setup) as run:
        result = score_samples(model, tokenizer, samples, args.batch_size, progress=not args.quiet, metric=args.metric,
                               cache_factory=run)
    result.config = config
    result.overall_column = args.data is not None  # a file is the unit: its score beside its lengths
    print(header_line(str(args.model), result))
    if described["kv_cache"] is not None:
        print(f"kv cache: {kv_line(described['kv_cache'])}")
    if setup.sparse is not None:
        print(describe(setup.sparse, args, run.state))
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
    hybrid = convert(model, plan, options, inplace=True)  # the original is not used again: no second copy
    with atomic_dir(out) as partial:  # a killed convert leaves OUT.partial, never a model without weights
        save(hybrid, partial, tokenizer)
    params = sum(p.numel() for p in hybrid.parameters())
    print(plan.summary())
    print(f"options: {options.to_dict()}")
    print(f"wrote {out} ({params / 1e6:.2f}M parameters) in {time.perf_counter() - start:.1f} s")
    return 0


def _generate(args) -> int:
    import time

    import torch

    from .cache import cache_nbytes
    from .compat import output_cache
    from .convert import is_hybrid
    from .models import load_model, load_tokenizer

    _kv_checks(args)  # the other arguments were checked by cli_checks.check_generate
    from .decoding.cli import describe, kv_line, setup_from_args
    from .decoding.run import run_setup

    prompt = args.prompt if args.prompt is not None else _read_text(args.prompt_file)
    if not prompt.strip():
        raise HydraheadError("the prompt is empty" + (f" ({args.prompt_file})" if args.prompt_file else ""))
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    setup = setup_from_args(model.config, args)
    kv = setup.describe()["kv_cache"]
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise HydraheadError("the prompt has no tokens with this model's tokenizer")
    _warn_long_prompt(ids.shape[1], model.config)
    with torch.no_grad(), run_setup(model, setup) as run:
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True,
                             **run.cache_kwargs(model))
        seconds = time.perf_counter() - start
    new = out.sequences[0, ids.shape[1]:]
    print(tokenizer.decode(new, skip_special_tokens=True))
    kind = "hybrid" if is_hybrid(model) else "original"
    print(f"[{kind} model: {ids.shape[1]} prompt tokens, {len(new)} new tokens in {seconds:.2f} s; "
          f"cache {cache_nbytes(output_cache(out)) / 1024:.1f} KiB"
          + (f"; kv cache {kv_line(kv)}" if kv is not None else "") + "]",
          file=sys.stderr)
    if setup.sparse is not None:
        print(f"[{describe(setup.sparse, args, run.state)}]", file=sys.stderr)
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
    from .models import check_model_dir
    from .plan import ModelShape
    from .selection import Scores, make_plan
    from .selection.scores import parse_weights

    scores = Scores.load(args.scores) if args.scores else None
    if scores is not None and args.weights:
        scores.weights = parse_weights(args.weights)
    if scores is not None:
        shape = scores.shape
    else:
        from transformers import AutoConfig

        shape = ModelShape.of(AutoConfig.from_pretrained(check_model_dir(args.model), local_files_only=True))
    ratio = args.ratio or (None if args.kv_budget else "7:1")
    if args.kv_formats:
        plan = _plan_with_formats(args, shape, scores)
    else:
        plan = make_plan(shape, args.strategy, ratio, args.granularity, args.kv_budget, args.dtype, scores,
                         args.per_layer, args.seed)
    if args.scores:
        plan.meta["scores"] = str(args.scores)
    out = plan.save(args.out)
    print(plan.summary(args.dtype))
    print(f"wrote {out}")
    return 0


def _plan_with_formats(args, shape, scores):
    """FA heads, KV formats and decode roles chosen together under --kv_budget, with each format's error measured
    on the model's own keys and values."""
    from .decoding.config import parse_budget
    from .models import load_model, load_tokenizer
    from .plan import ModelShape
    from .selection.kv_choice import measure_format_errors, plan_under_budget

    specs = [s.strip() for s in args.kv_formats.split(",") if s.strip()]
    model = load_model(args.model)
    if ModelShape.of(model.config) != shape:
        from .selection import SelectionError

        raise SelectionError(f"{args.scores} scores a model with {shape.describe()}, not {args.model}")
    errors = measure_format_errors(model, load_tokenizer(args.model), specs, seed=args.seed)
    mean = errors.errors.mean(axis=(0, 1))
    print("format error per KV head (relative MSE of keys + values, mean over heads): "
          + ", ".join(f"{spec} {e:.4f}" for spec, e in zip(specs, mean)))
    decode = {"budget": parse_budget(args.decode_budget)} if args.decode_budget is not None else None
    return plan_under_budget(shape, scores, errors, args.kv_budget, args.granularity, args.max_error, args.roles_target,
                             decode)


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

    from .cli_checks import distill_config
    from .transfer import train_stage

    from .resume import parse_changes
    from .transfer import TransferError
    from .transfer.checkpoint import CHANGEABLE

    allowed = parse_changes(args.change_on_resume, CHANGEABLE, TransferError)
    config = distill_config(args)
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
                                              "align_steps", "distill_steps", "long_steps", "fa_position",
                                              "head_weight", "distill_mixture", "long_mixture",
                                              "activation_checkpointing")}
    settings = {k: v for k, v in settings.items() if v is not None}
    if args.behaviours:
        settings["behaviours"] = [b.strip() for b in args.behaviours.split(",") if b.strip()]
    cfg = PipelineConfig.quick(**settings) if args.quick else PipelineConfig(**settings)
    run_pipeline(cfg, args.results, progress=not args.quiet)
    return 0


def _kv_checks(args) -> None:
    """--kv_format and the KV sizes, checked by hydrahead.kv (torch) before any model loads."""
    from .kv.layer import check_sizes
    from .kv.spec import canonical_spec

    if args.kv_format is not None:
        canonical_spec(args.kv_format)
    check_sizes(*(default if value is None else value
                  for value, default in ((args.kv_window, 0), (args.kv_sink, 0), (args.kv_block, 64))))


def _add_change_on_resume(parser, summary: str) -> None:
    from .cli_help import flag

    parser.add_argument(*flag("change_on_resume"), metavar="KEYS",
                        help="settings that may differ from the checkpoint's on purpose, e.g. lr after a divergence or "
                             f"more steps (recorded in {summary}); otherwise a changed setting is refused (default: none)")


def _add_kv_args(parser) -> None:
    from .cli_help import flag

    group = parser.add_argument_group("quantized KV cache (UltraQuant)")
    group.add_argument(*flag("kv_format"), help="KEYS:VALUES formats of every KV head, e.g. tq4:int4, fp8, bf16, "
                                                "int4-token (formats: bf16 fp8 int4 mxfp4 nvfp4 tq4; default: the "
                                                "plan's kv_formats, else the model's own cache)")
    group.add_argument(*flag("kv_window"), type=int, help="recent tokens kept in high precision (default: 128)")
    group.add_argument(*flag("kv_sink"), type=int, help="first tokens kept in high precision (default: 4)")
    group.add_argument(*flag("kv_block"), type=int, help="tokens quantized together, a multiple of 32 (default: 64)")


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
    if args.no_eval:  # the closing evaluation of 4 tasks takes minutes on a CPU
        overrides["eval_samples"] = 0
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


# every behaviour of hydrahead.selection.BEHAVIOURS (a test keeps them equal; the registry imports torch)
BEHAVIOUR_HELP = "retrieval, multikey, induction, vt, no_repeat, common_words"


def build_parser() -> argparse.ArgumentParser:
    from . import cli_checks as checks
    from .cli_help import Parser, VersionAction, command, flag
    from .decoding.cli import add_roles_parser, add_sparse_args
    from .teacher.config import PRESETS, TeacherConfig
    from .transfer.config import DEFAULT_BEHAVIOURS, DISTILL_MIXTURES, TransferConfig
    from .transfer.pipeline import QUICK, PipelineConfig

    parser = Parser(prog="hydrahead", description="Head-wise long-context tools for HF causal LMs.")
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)

    ev = command(sub, "eval", "evaluate a local HF causal LM on RULER-style tasks")
    ev.add_argument(*flag("model"), required=True, help="a local HF model directory")
    ev.add_argument(*flag("tasks"), help="comma-separated task names (see `hydrahead tasks list`)")
    ev.add_argument(*flag("data"), help="a RULER-format JSONL file instead of generated tasks")
    ev.add_argument(*flag("lengths"), help="comma-separated context lengths in tokens (default: 512; not with --data, "
                                           "whose samples carry their lengths)")
    ev.add_argument(*flag("limit"), type=int, default=None, help="samples per task and length (default: 50; "
                                                                  "with --data, every sample of the file)")
    ev.add_argument(*flag("seed"), type=int, default=0, help="seed of the generated samples")
    ev.add_argument(*flag("depths"), help="needle depths in %% for NIAH tasks, e.g. 0,50,100 (default: random "
                                          "depths; with --plot 0,25,50,75,100)")
    ev.add_argument(*flag("batch_size"), type=int, default=8, help="prompts generated together (fewer for long ones)")
    ev.add_argument(*flag("metric"), choices=["string_match_all", "string_match_part"],
                    help="override the task's metric (default: each task's own)")
    ev.add_argument(*flag("output_path"), help="a folder; each run writes a new subfolder (default: nothing written)")
    ev.add_argument(*flag("plot"), action="store_true", help="write accuracy-vs-length and depth-heatmap PNGs")
    ev.add_argument(*flag("quiet"), action="store_true", help="no progress bar")
    _add_kv_args(ev)
    add_sparse_args(ev)
    ev.set_defaults(func=_eval, check=checks.check_eval)

    cv = command(sub, "convert", "convert a Qwen3 / Llama model into a head-wise hybrid following a plan")
    cv.add_argument(*flag("model"), required=True, help="a local HF model directory")
    cv.add_argument(*flag("plan"), required=True, help="a head plan JSON file")
    cv.add_argument(*flag("out"), required=True, help="the hybrid's output directory")
    cv.add_argument(*flag("fusion"), default="scale", choices=["scale", "concat", "gate"],
                    help="how head outputs are combined: RMS-normalised and scaled per head, raw, or an "
                         "input-dependent softmax gate")
    cv.add_argument(*flag("fa_position"), default="nope_logscale", choices=["nope_logscale", "rope", "rope_clamped"],
                    help="FA heads without RoPE and with a log-length query scale, with RoPE kept, or with RoPE up "
                         "to the native length and clamped beyond (ReRoPE, with the log-length scale)")
    cv.add_argument(*flag("gdn_shared_kv"), action="store_true",
                    help="GDN heads share their KV head's k/v (default: each GDN head gets its own copy, MHA-like)")
    cv.add_argument(*flag("conv_size"), type=int, default=4, help="width of the GDN heads' short causal convolution")
    cv.add_argument(*flag("logscale_length"), type=int,
                    help="keys before the FA query scale grows (default: the model's max_position_embeddings)")
    cv.set_defaults(func=_convert, check=checks.check_convert)

    gn = command(sub, "generate", "greedy continuation of a prompt (original or hybrid model)")
    gn.add_argument(*flag("model"), required=True, help="a local HF model directory (original or hybrid)")
    gn.add_argument(*flag("prompt"), help="the prompt text")
    gn.add_argument(*flag("prompt_file"), help="a file holding the prompt")
    gn.add_argument(*flag("max_new_tokens"), type=int, default=32, help="tokens to generate")
    _add_kv_args(gn)
    add_sparse_args(gn)
    gn.set_defaults(func=_generate, check=checks.check_generate)
    add_roles_parser(sub)

    sc = command(sub, "score", "score every attention head by activation and path patching")
    sc.add_argument(*flag("model"), required=True, help="a local HF model directory (the original Transformer)")
    sc.add_argument(*flag("behaviours", "--behaviors"), default=",".join(DEFAULT_BEHAVIOURS),
                    help=f"comma-separated, of {BEHAVIOUR_HELP}")
    sc.add_argument(*flag("length"), type=int, default=512, help="prompt length in tokens")
    sc.add_argument(*flag("num_pairs"), type=int, default=8, help="clean / corrupted pairs per behaviour")
    sc.add_argument(*flag("seed"), type=int, default=0, help="seed of the prompt pairs")
    sc.add_argument(*flag("direction"), default="denoise", choices=["denoise", "noise"],
                    help="denoise: clean heads into the corrupted run; noise: the reverse")
    sc.add_argument(*flag("receivers"), type=int, default=4, help="top heads that path patching traces back from")
    sc.add_argument(*flag("attribution_top"), type=int,
                    help="estimate every head by attribution patching, then really patch only its top K "
                         "(default: patch every head)")
    sc.add_argument(*flag("retrieval_samples"), type=int, default=8,
                    help="NIAH samples for the retrieval-score baseline (0 skips it)")
    sc.add_argument(*flag("weights"), help="behaviour weights for the fused ranking, e.g. retrieval=2,induction=1 "
                                           "(default: equal)")
    sc.add_argument(*flag("max_tokens"), type=int, default=16384, help="tokens per batched forward")
    sc.add_argument(*flag("out"), required=True, help="the scores JSON file")
    sc.add_argument(*flag("plot"), help="a PNG of layer x head heatmaps")
    sc.add_argument(*flag("quiet"), action="store_true", help="no progress bar")
    sc.set_defaults(func=_score, check=checks.check_score)

    pl = command(sub, "plan", "a head plan from scores (or a layer-wise / random baseline)")
    pl.add_argument(*flag("scores"), help="a scores JSON file from `hydrahead score`")
    pl.add_argument(*flag("model"), help="a model directory (for layerwise / random plans without scores)")
    pl.add_argument(*flag("strategy"), default="interp",
                    choices=["interp", "interp_lowest", "retrieval_score", "layerwise", "random"],
                    help="fused causal scores (interp_lowest: the heads they rank last), the retrieval-score "
                         "baseline, whole layers, or random heads")
    pl.add_argument(*flag("ratio"), help="GDN:FA units, e.g. 7:1 (default: 7:1 unless --kv_budget is given)")
    pl.add_argument(*flag("granularity"), default="query", choices=["query", "kv"],
                    help="units are query heads, or whole KV groups (which is what saves cache)")
    pl.add_argument(*flag("kv_budget"), type=int, help="KV cache bytes per token for the whole model")
    pl.add_argument(*flag("kv_formats"), help="candidate KV formats, e.g. bf16,fp8,int4,tq4:int4: choose FA heads, a "
                                              "format per KV head and decode roles together under --kv_budget "
                                              "(needs --model, whose keys and values measure each format's error)")
    pl.add_argument(*flag("max_error"), type=float, default=0.02,
                    help="with --kv_formats: the largest relative MSE (keys + values) a head's base format may have")
    pl.add_argument(*flag("roles_target"), type=float, default=0.1,
                    help="with --kv_formats: share of the cached KV heads of layers 1.. that are retrieval heads")
    pl.add_argument(*flag("decode_budget"), help="with --kv_formats: write sparse decoding settings with this budget "
                                                 "(tokens or a share) into the plan (default: none, dense decoding)")
    pl.add_argument(*flag("dtype"), default="bfloat16", help="KV dtype for the budget and the summary")
    pl.add_argument(*flag("per_layer"), action="store_true", help="the same number of FA units in every layer")
    pl.add_argument(*flag("weights"), help="re-weight the behaviours of the fused ranking, e.g. retrieval=2 "
                                           "(default: the scores file's)")
    pl.add_argument(*flag("seed"), type=int, default=0, help="for --strategy random")
    pl.add_argument(*flag("out"), required=True, help="the plan JSON file")
    pl.set_defaults(func=_plan, check=checks.check_plan)

    ab = command(sub, "ablate", "mean-ablate the top-k heads by score vs k random heads")
    ab.add_argument(*flag("model"), required=True, help="a local HF model directory (the model that was scored)")
    ab.add_argument(*flag("scores"), required=True, help="a scores JSON file from `hydrahead score`")
    ab.add_argument(*flag("task"), default="niah_single_1", help="the task whose score is measured")
    ab.add_argument(*flag("length"), type=int, default=512, help="context length in tokens")
    ab.add_argument(*flag("limit"), type=int, default=50, help="samples per point of the curve")
    ab.add_argument(*flag("ks"), default="1,2,4,8", help="comma-separated numbers of heads to ablate")
    ab.add_argument(*flag("random_seeds"), type=int, default=3, help="random head sets per k")
    ab.add_argument(*flag("seed"), type=int, default=0, help="seed of the samples")
    ab.add_argument(*flag("output_path"), help="a folder; each run writes a new subfolder with the curve and its plot")
    ab.add_argument(*flag("quiet"), action="store_true", help="no progress bar")
    ab.set_defaults(func=_ablate, check=checks.check_ablate)

    def config_default(name: str) -> str:
        return f"(default: the --config file's, else {getattr(TransferConfig, name)})"

    ds = command(sub, "distill", "one transfer stage (align | distill | long) of a hybrid; torchrun-ready")
    ds.add_argument(*flag("config"), help="a YAML file of TransferConfig keys; the flags below override it")
    ds.add_argument(*flag("stage"), choices=["align", "distill", "long"], help=f"the stage {config_default('stage')}")
    ds.add_argument(*flag("teacher"), help=f"the original model directory {config_default('teacher')}")
    ds.add_argument(*flag("plan"), help="convert the teacher with this head plan to make the student")
    ds.add_argument(*flag("init"), help="or start from this hybrid directory (the previous stage's output)")
    ds.add_argument(*flag("out"), help="the run directory (checkpoints, log, the trained hybrid in OUT/model) "
                                       f"{config_default('out')}")
    ds.add_argument(*flag("steps"), type=int, help=f"optimizer steps {config_default('steps')}")
    ds.add_argument(*flag("seq_len"), type=int, help=f"tokens per sequence {config_default('seq_len')}")
    ds.add_argument(*flag("batch_size"), type=int,
                    help=f"sequences per optimizer step, all processes {config_default('batch_size')}")
    ds.add_argument(*flag("micro_batch"), type=int,
                    help="sequences per forward in one process (default: the --config file's, else the largest "
                         "divisor of each process's share of --batch_size up to 4)")
    ds.add_argument(*flag("lr"), type=float, help=f"peak learning rate {config_default('lr')}")
    ds.add_argument(*flag("warmup"), type=int, help=f"linear warmup steps {config_default('warmup')}")
    ds.add_argument(*flag("seed"), type=int, help=f"seed of the data and the new weights {config_default('seed')}")
    ds.add_argument(*flag("checkpoint_every"), type=int, help=f"steps between checkpoints {config_default('checkpoint_every')}")
    ds.add_argument(*flag("max_minutes"), type=float, help="stop with a checkpoint after this long; rerun to resume "
                                                            "(default: no limit)")
    ds.add_argument(*flag("activation_checkpointing"), action="store_true", default=None,
                    help="distill / long: recompute each decoder layer in the backward pass instead of keeping its "
                         "activations (less memory for long sequences, one more forward pass per layer) "
                         f"{config_default('activation_checkpointing')}")
    ds.add_argument(*flag("parallel"), choices=["auto", "ddp", "fsdp"],
                    help="under torchrun: a replica per process (ddp) or sharded (fsdp); auto: fsdp on GPUs, else ddp "
                         f"{config_default('parallel')}")
    ds.add_argument(*flag("set"), action="append", metavar="KEY=VALUE",
                    help="any other config key, e.g. --set kl_weight=2 (repeatable)")
    _add_change_on_resume(ds, "summary.json")
    ds.add_argument(*flag("quiet"), action="store_true", help="no progress bar")
    ds.set_defaults(func=_distill, check=checks.check_distill)

    def pipeline_default(name: str) -> str:
        quick = f"; with --quick {QUICK[name]}" if name in QUICK else ""
        return f"(default: {getattr(PipelineConfig, name)}{quick})"

    pp = command(sub, "pipeline", "score -> plan -> convert -> align -> distill -> long -> evaluate -> report")
    pp.add_argument(*flag("teacher"), default="models/hydrahead-teacher-3m", help="the original model directory")
    pp.add_argument(*flag("out"), default="runs/pipeline", help="the run directory (finished steps are reused)")
    pp.add_argument(*flag("results"), default="results/pipeline", help="a folder; each run writes a new report folder")
    pp.add_argument(*flag("quick"), action="store_true", help="a few minutes: fewer pairs, steps, lengths and samples")
    pp.add_argument(*flag("ratio"), help=f"GDN:FA query heads {pipeline_default('ratio')}")
    pp.add_argument(*flag("granularity"), choices=["query", "kv"],
                    help=f"plan units: query heads or KV groups {pipeline_default('granularity')}")
    pp.add_argument(*flag("behaviours", "--behaviors"), help="comma-separated: the behaviours whose head scores pick "
                    f"the FA heads, of {BEHAVIOUR_HELP} (default: {','.join(DEFAULT_BEHAVIOURS)}; with --quick "
                    f"{','.join(QUICK['behaviours'])})")
    pp.add_argument(*flag("align_steps"), type=int, help=f"stage 1 steps {pipeline_default('align_steps')}")
    pp.add_argument(*flag("distill_steps"), type=int, help=f"stage 2 steps {pipeline_default('distill_steps')}")
    pp.add_argument(*flag("long_steps"), type=int, help=f"stage 3 steps {pipeline_default('long_steps')}")
    pp.add_argument(*flag("fa_position"), choices=["nope_logscale", "rope", "rope_clamped"],
                    help=f"the FA heads' positions {pipeline_default('fa_position')}")
    pp.add_argument(*flag("activation_checkpointing"), action="store_true", default=None,
                    help="distill and long stages: recompute each decoder layer in the backward pass (less memory "
                         "for long sequences; default: off)")
    pp.add_argument(*flag("head_weight"), type=float,
                    help=f"align: weight of the per-head MSE against the original heads {pipeline_default('head_weight')}")
    pp.add_argument(*flag("distill_mixture"), choices=list(DISTILL_MIXTURES),
                    help="distill: the data mixture; corpus is the teacher's own, skills doubles niah_multivalue, vt "
                         "and cwe, skills-cwe draws cwe twice as often again "
                         f"{pipeline_default('distill_mixture')}")
    pp.add_argument(*flag("long_mixture"), choices=list(DISTILL_MIXTURES),
                    help=f"long: the data mixture, one of the same {pipeline_default('long_mixture')}")
    pp.add_argument(*flag("limit"), type=int,
                    help=f"evaluation samples per task and length {pipeline_default('limit')}")
    pp.add_argument(*flag("seed"), type=int, help=f"seed of the training data and evaluation {pipeline_default('seed')}")
    pp.add_argument(*flag("quiet"), action="store_true", help="no progress bars")
    pp.set_defaults(func=_pipeline, check=checks.check_pipeline)

    def preset_default(name: str) -> str:
        return f"(default: the preset's; teacher-3m: {getattr(TeacherConfig, name)})"

    teacher = command(sub, "teacher", "the small teacher model").add_subparsers(dest="teacher_command", required=True)
    tr = command(teacher, "train", "train the teacher from scratch (resumes from OUT/training/checkpoint)")
    tr.add_argument(*flag("out"), required=True, help="the output directory (the HF model; its checkpoint in OUT/training)")
    tr.add_argument(*flag("preset"), default="teacher-3m", choices=sorted(PRESETS),
                    help="a named configuration (flags below override it): the shipped 4-layer teacher or an 8-layer one")
    tr.add_argument(*flag("steps"), type=int, help=f"optimizer steps {preset_default('steps')}")
    tr.add_argument(*flag("tokens_per_batch"), type=int, help=f"tokens per step {preset_default('tokens_per_batch')}")
    tr.add_argument(*flag("lr"), type=float, help=f"peak learning rate {preset_default('lr')}")
    tr.add_argument(*flag("seed"), type=int, help=f"seed of the data and the weights {preset_default('seed')}")
    tr.add_argument(*flag("hidden_size"), type=int, help=f"model width {preset_default('hidden_size')}")
    tr.add_argument(*flag("num_layers"), type=int, help=f"decoder layers {preset_default('num_layers')}")
    tr.add_argument(*flag("native_length"), type=int,
                    help=f"context length trained at (max_position_embeddings) {preset_default('native_length')}")
    tr.add_argument(*flag("eval_every"), type=int, help=f"steps between task evaluations {preset_default('eval_every')}")
    tr.add_argument(*flag("eval_samples"), type=int,
                    help=f"samples per task of each evaluation, 0 for none {preset_default('eval_samples')}")
    tr.add_argument(*flag("no_eval"), action="store_true",
                    help="skip the periodic and the closing task evaluation (the same as --eval_samples 0)")
    tr.add_argument(*flag("checkpoint_every"), type=int,
                    help=f"steps between checkpoints {preset_default('checkpoint_every')}")
    tr.add_argument(*flag("max_minutes"), type=float,
                    help="stop (with a checkpoint) after this long; run again to resume (default: no limit)")
    _add_change_on_resume(tr, "training_summary.json")
    tr.add_argument(*flag("quiet"), action="store_true", help="no progress bar")
    tr.set_defaults(func=_teacher_train, check=checks.check_teacher_train)

    tasks = command(sub, "tasks", "list or generate tasks").add_subparsers(dest="tasks_command", required=True)
    command(tasks, "list", "the registered tasks").set_defaults(func=_tasks_list)
    gen = command(tasks, "generate", "write a RULER-format JSONL file")
    gen.add_argument(*flag("tokenizer"), required=True, help="a local tokenizer or model directory")
    gen.add_argument(*flag("task"), required=True, help="a task name (see `hydrahead tasks list`)")
    gen.add_argument(*flag("length"), type=int, required=True, help="tokens per sample, prompt and answer")
    gen.add_argument(*flag("num_samples"), type=int, default=50, help="samples to write")
    gen.add_argument(*flag("seed"), type=int, default=0, help="seed of the samples")
    gen.add_argument(*flag("depth"), type=float, help="needle depth in %% for NIAH tasks and passkey (default: random)")
    gen.add_argument(*flag("out"), required=True, help="the JSONL file to write")
    gen.set_defaults(func=_tasks_generate, check=checks.check_tasks_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "check", None):
            args.check(args)  # before torch and transformers are imported: a typo is reported at once
        from .quiet import third_party_quiet

        with third_party_quiet():
            return args.func(args)
    except HydraheadError as e:
        print(f"hydrahead: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hydrahead: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
