"""Checks of the command line's arguments that run before torch and transformers are imported.

Importing those two takes 5-25 s on a loaded machine; a typo should not wait for it. Every check here
uses only the standard library and hydrahead's torch-free modules (plan, task registry, transfer and
decoding configs), and `tests/unit/test_cli.py` asserts that neither library gets imported on the way.
What needs a tokenizer or a model (a length too short for a task's template, a directory that is not a
causal LM, the KV format's codecs) is still checked later, before any model is loaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import HydraheadError


def positive(flag: str, value, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise HydraheadError(f"{flag} must be {'at least 0' if allow_zero else 'positive'}, got {value}")


def model_dir(path, flag: str = "--model") -> None:
    """A local Hugging Face model directory: the same wording as models.load_model, minus transformers."""
    path = Path(path)
    if not path.is_dir():
        raise HydraheadError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise HydraheadError(f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        json.loads((path / "config.json").read_text())
    except ValueError as e:
        raise HydraheadError(f"{path}/config.json cannot be read: {e}") from None


def existing_file(path, flag: str) -> None:
    """A file the command reads (the reading itself may need torch, so its absence is found now)."""
    if path is not None and not Path(path).is_file():
        raise HydraheadError(f"{flag} {path} does not exist")


def tasks(spec) -> None:
    from .tasks import parse_tasks

    parse_tasks(spec)


class _FastTokenizer:
    """The model's tokenizer.json through `tokenizers` alone, called the way the task generators call a
    transformers tokenizer (which, from transformers 5, imports torch)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}


def lengths_fit(model, spec, lengths, seed: int = 0, depths=(None,)) -> None:
    """Every task's template fits every length, counted with the model's own tokenizer. Skipped for a
    directory without tokenizer.json: the same check runs again with the full tokenizer later."""
    from .tasks import parse_tasks
    from .tasks.base import check_fits

    path = Path(model) / "tokenizer.json"
    if not path.is_file():
        return
    counter = _FastTokenizer(path)
    for task in parse_tasks(spec):
        for length in lengths:
            for depth in depths if task.supports_depth else (None,):
                check_fits(task, counter, length, seed, depth)


def ratio(value, flag: str = "--ratio") -> None:
    if value is not None and not re.fullmatch(r"\s*\d+\s*:\s*\d+\s*", str(value)):
        raise HydraheadError(f"{flag} takes GDN:FA units as two whole numbers, e.g. 7:1, got {value!r}")


def numbers(flag: str, spec: str, kind=float, low=None, high=None) -> list:
    try:
        values = [kind(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise HydraheadError(f"{flag} takes comma-separated numbers, got {spec!r}") from None
    if not values or any((low is not None and v < low) or (high is not None and v > high) for v in values):
        raise HydraheadError(f"{flag} takes comma-separated numbers in [{low}, {high}], got {spec!r}")
    return values


def decode_flags(args) -> None:
    """--plan / --roles files, sparse settings without sparse decoding, KV sizes without KV formats. The formats
    and sizes themselves are checked by hydrahead.kv, which needs torch: later, still before the model loads."""
    from .decoding.cli import check_decode_flags

    existing_file(args.plan, "--plan")
    existing_file(args.roles, "--roles")
    check_decode_flags(args)


def check_eval(args) -> None:
    if args.data is None and args.tasks is None:
        raise HydraheadError("give --tasks (generated data) or --data FILE.jsonl (a RULER-format file)")
    data_flags(args)
    positive("--limit", args.limit)
    positive("--batch_size", args.batch_size)
    if args.depths:
        from .tasks.base import parse_depths

        depths = parse_depths(args.depths)
    else:
        depths = [None]
    existing_file(args.data, "--data")
    decode_flags(args)
    model_dir(args.model)
    if args.tasks is not None:
        from .tasks.base import parse_lengths

        tasks(args.tasks)
        lengths_fit(args.model, args.tasks, parse_lengths(args.lengths or "512"), args.seed, depths)
    if args.output_path:  # found now, not as a traceback after the whole evaluation
        from .outputs import check_dir_writable

        check_dir_writable(args.output_path, "--output_path")


def data_flags(args) -> None:
    """--data brings its own tasks, lengths and depths: a flag that would be silently ignored is an error."""
    if args.data is None:
        return
    ignored = [flag for flag in ("--tasks", "--lengths", "--depths") if getattr(args, flag[2:]) is not None]
    if ignored:
        raise HydraheadError(f"--data takes its tasks, lengths and depths from the file; {', '.join(ignored)} "
                             f"would be ignored: drop {'it' if len(ignored) == 1 else 'them'}")


def check_generate(args) -> None:
    if (args.prompt is None) == (args.prompt_file is None):
        raise HydraheadError("give exactly one of --prompt TEXT or --prompt_file FILE")
    existing_file(args.prompt_file, "prompt file")
    positive("--max_new_tokens", args.max_new_tokens)
    decode_flags(args)
    model_dir(args.model)


def check_convert(args) -> None:
    from .plan import HeadPlan

    HeadPlan.load(args.plan)  # a missing or malformed plan is named now, not after the model loads
    from .outputs import check_model_out

    check_model_out(args.out, args.model)  # never onto the source model
    positive("--conv_size", args.conv_size)
    positive("--logscale_length", args.logscale_length)
    model_dir(args.model)


def check_score(args) -> None:
    for flag in ("length", "num_pairs", "receivers", "max_tokens", "attribution_top"):
        positive(f"--{flag}", getattr(args, flag))
    positive("--retrieval_samples", args.retrieval_samples, allow_zero=True)
    model_dir(args.model)


def check_plan(args) -> None:
    if args.scores is None and args.model is None:
        raise HydraheadError("give --scores FILE (from `hydrahead score`) or, for layerwise / random plans, --model DIR")
    if args.kv_formats is not None:
        if args.scores is None or args.model is None or args.kv_budget is None:
            raise HydraheadError("--kv_formats chooses formats under --kv_budget from --scores and the --model's own "
                                 "keys and values: give all three")
        if args.ratio is not None or args.strategy != "interp" or args.per_layer:
            raise HydraheadError("--kv_formats fills --kv_budget in the order of the fused scores: no --ratio, "
                                 "--strategy or --per_layer")
    elif any(v is not None for v in (args.decode_budget,)):
        raise HydraheadError("--decode_budget only applies with --kv_formats")
    if args.decode_budget is not None:
        from .decoding.config import parse_budget

        parse_budget(args.decode_budget)
    if not 0 <= args.roles_target <= 1:
        raise HydraheadError(f"--roles_target must be a share in [0, 1], got {args.roles_target}")
    positive("--max_error", args.max_error)
    existing_file(args.scores, "--scores")
    from .outputs import check_file_writable

    check_file_writable(args.out, "--out", "plan.json")
    ratio(args.ratio)
    positive("--kv_budget", args.kv_budget)
    if args.scores is None or args.kv_formats is not None:
        model_dir(args.model)


def check_ablate(args) -> None:
    numbers("--ks", args.ks, int, 1)
    tasks(args.task)
    for flag in ("length", "limit", "random_seeds"):
        positive(f"--{flag}", getattr(args, flag))
    existing_file(args.scores, "--scores")
    model_dir(args.model)


def distill_config(args):
    """The stage's TransferConfig: the YAML file, the flags and --set KEY=VALUE on top (checked)."""
    from .transfer.config import load_config

    overrides = {k: getattr(args, k) for k in (
        "stage", "teacher", "plan", "init", "out", "steps", "seq_len", "batch_size", "micro_batch", "lr", "warmup",
        "seed", "checkpoint_every", "max_minutes", "parallel", "activation_checkpointing")}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise HydraheadError(f"--set takes KEY=VALUE, got {item!r}")
        import yaml

        overrides[key.strip()] = yaml.safe_load(value)
    return load_config(args.config, overrides)


def check_distill(args) -> None:
    config = distill_config(args)
    model_dir(config.teacher, "--teacher")
    existing_file(config.plan, "--plan")
    if config.init is not None:
        model_dir(config.init, "--init")


def check_pipeline(args) -> None:
    ratio(args.ratio)
    for flag in ("align_steps", "distill_steps", "long_steps", "limit"):
        positive(f"--{flag}", getattr(args, flag))
    if args.head_weight is not None and args.head_weight < 0:
        raise HydraheadError(f"--head_weight must be at least 0, got {args.head_weight}")
    model_dir(args.teacher, "--teacher")


def check_teacher_train(args) -> None:
    for flag in ("steps", "tokens_per_batch", "hidden_size", "num_layers", "native_length", "eval_every",
                 "checkpoint_every"):
        positive(f"--{flag}", getattr(args, flag))
    positive("--eval_samples", args.eval_samples, allow_zero=True)
    if args.lr is not None and args.lr <= 0:
        raise HydraheadError(f"--lr must be positive, got {args.lr}")


def check_tasks_generate(args) -> None:
    tasks(args.task)
    positive("--length", args.length)
    positive("--num_samples", args.num_samples)
    if args.depth is not None and not 0 <= args.depth <= 100:
        raise HydraheadError(f"--depth is a percentage in [0, 100], got {args.depth}")
    if not Path(args.tokenizer).is_dir():
        raise HydraheadError(f"tokenizer directory {args.tokenizer} does not exist")
    lengths_fit(args.tokenizer, args.task, [args.length], args.seed, [args.depth])


def check_roles(args) -> None:
    from .decoding.config import DecodingError, SparseConfig

    if not 0 <= args.target <= 1:
        raise DecodingError(f"--target must be a share in [0, 1], got {args.target}")
    if args.method == "scores" and not args.scores:
        raise DecodingError("--method scores needs --scores FILE (from `hydrahead score`)")
    existing_file(args.scores, "--scores")
    positive("--steps", args.steps)
    positive("--samples", args.samples)
    SparseConfig(args.budget)  # a bad budget fails before anything loads
    model_dir(args.model)
