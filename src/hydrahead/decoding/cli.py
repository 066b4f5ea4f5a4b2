"""The command-line side of decoding with a head plan: the `--plan` and sparse-decoding options of `eval` /
`generate`, and `hydrahead roles` (decode roles learned with gates, or from scores, at random, or by the
uniform rule)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import HydraheadError
from .config import DecodingError, SparseConfig

ROLE_METHODS = ("hardkuma", "l1", "scores", "random", "uniform")
SPARSE_FLAGS = (("budget", "budget"), ("selection", "mode"), ("selection_score", "score"), ("sink", "sink"),
                ("recent", "recent"), ("dense_every", "dense_every"), ("dense_share", "dense_share"))  # flag -> field


def add_sparse_args(parser) -> None:
    from ..cli_help import flag

    group = parser.add_argument_group("head plan and sparse decoding (LycheeDecode)")
    group.add_argument(*flag("plan"), help="a head plan JSON whose decode roles, KV formats and decode settings apply "
                                           "(default: a hybrid's own plan); the flags below override it")
    group.add_argument(*flag("sparse_decode"), action=argparse.BooleanOptionalAction, default=None,
                       help="decode with retrieval heads selecting tokens and sparse heads reusing them (default: on "
                            "when the plan has decode settings)")
    group.add_argument(*flag("budget"), help="tokens per sparse head and step: a count or a share of the context "
                                             "(0.1) (default: the plan's, else 4096)")
    group.add_argument(*flag("roles"), help="a plan JSON whose decode roles replace the plan's (`hydrahead roles`)")
    group.add_argument(*flag("selection"), choices=["token", "block"], help="top-k tokens or blocks of 64 (default: token)")
    group.add_argument(*flag("selection_score"), choices=["attention", "authors"],
                       help="how retrieval heads rank tokens: softmax attention summed over the GQA group, or "
                            "LycheeDecode's code: the group's mean query . each key, raw (default: attention)")
    group.add_argument(*flag("sink"), type=int, help="first tokens every selection keeps (default: 4)")
    group.add_argument(*flag("recent"), type=int, help="last tokens every selection keeps (default: 32)")
    group.add_argument(*flag("dense_every"), type=int, help="a dense correction step every N tokens (default: never)")
    group.add_argument(*flag("dense_share"), type=float,
                       help="a step runs dense when the budget is at least this share of the context, where selecting "
                            "costs more than it saves (about 0.375 on a CPU with the native kernels); 1.0: sparse up to "
                            "a budget covering every key (default: 0.4)")


def _plan_json(path) -> dict:
    """A plan file's JSON, read without building the plan (which needs torch for KV formats)."""
    from ..jsonfile import read_json
    from ..plan import PlanError

    return read_json(path, "plan file", PlanError)


def _model_plan_json(model_dir) -> dict | None:
    """The head plan in a hybrid directory's config.json, or None (checked properly when the model loads)."""
    try:
        raw = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return ((raw.get("hydrahead") or {}).get("plan")) if isinstance(raw, dict) else None


def check_decode_flags(args) -> None:
    """Flags that cannot mean anything, found before torch is imported: sparse settings with sparse decoding off,
    KV sizes without KV formats, a --roles plan without roles."""
    plan = _plan_json(args.plan) if args.plan is not None else _model_plan_json(args.model)
    plan = plan if isinstance(plan, dict) else {}
    used = [f"--{name}" for name, _ in SPARSE_FLAGS if getattr(args, name) is not None]
    used += ["--roles"] if args.roles is not None else []
    if used and not args.sparse_decode and (args.sparse_decode is False or plan.get("decode") is None):
        raise DecodingError(f"{used[0]} only applies with --sparse_decode (or a plan with decode settings)")
    if getattr(args, "kv_format", None) is None and not plan.get("kv_formats"):
        for name in ("window", "sink", "block"):
            if getattr(args, f"kv_{name}", None) is not None:
                raise HydraheadError(f"--kv_{name} needs --kv_format (or a plan with kv_formats)")
    if args.roles is not None and "decode_roles" not in _plan_json(args.roles):
        raise DecodingError(f"{args.roles} has no decode roles; make a plan with `hydrahead roles`")
    if args.sparse_decode is not False and (args.sparse_decode or plan.get("decode") is not None):
        settings = {field: getattr(args, name) for name, field in SPARSE_FLAGS if getattr(args, name) is not None}
        SparseConfig(**{**(plan.get("decode") or {}), **settings})  # a budget that cannot hold sink + recent, ...


def setup_from_args(config, args):
    """The `DecodeSetup` of the command's flags for a model of `config` (see `decode_setup`)."""
    from .run import decode_setup

    return decode_setup(config, args.plan, roles=args.roles, sparse=args.sparse_decode, kv_format=args.kv_format,
                        kv_window=args.kv_window, kv_sink=args.kv_sink, kv_block=args.kv_block,
                        **{field: getattr(args, name) for name, field in SPARSE_FLAGS})


def kv_line(kv: dict) -> str:
    if kv["kv_format"] == "per head":
        return f"per head ({', '.join(kv['formats'])}; {kv['bytes_per_token']:g} B/token)"
    return f"{kv['kv_format']} (sink {kv['sink']}, window {kv['window']}, block {kv['block_size']})"


def describe(config: SparseConfig, args, state) -> str:
    roles = args.roles or args.plan or "the model's plan"
    read = f"; KV read per decode step {100 * state.stats.read_fraction:.1f}% of dense" if state and state.stats.steps else ""
    return (f"sparse decode: budget {config.budget}, {config.mode} selection, {config.score} score, roles {roles}"
            + read)


def add_roles_parser(sub) -> None:
    from ..cli_checks import check_roles
    from ..cli_help import command, flag

    ro = command(sub, "roles", "decode roles (retrieval / sparse per KV head) for sparse decoding, as a plan")
    ro.add_argument(*flag("model"), required=True,
                    help="a local HF model directory (the original model for learned roles)")
    ro.add_argument(*flag("target"), type=float, default=0.1, help="share of the KV heads of layers 1.. that are retrieval")
    ro.add_argument(*flag("out"), required=True, help="the plan JSON file")
    ro.add_argument(*flag("method"), default="hardkuma", choices=ROLE_METHODS,
                    help="learned gates (HardKuma, or L1 as DuoAttention), from head scores, random, or the uniform rule")
    ro.add_argument(*flag("scores"), help="a scores JSON from `hydrahead score` (for --method scores)")
    ro.add_argument(*flag("steps"), type=int, default=150, help="gate training steps")
    ro.add_argument(*flag("budget"), default="0.125", help="the decode budget the gates learn for (count or share)")
    ro.add_argument(*flag("samples"), type=int, default=48, help="offline passkey / NIAH training samples")
    ro.add_argument(*flag("threshold"), action="store_true",
                    help="retrieval where the learned gate exceeds 0.5 instead of the top heads meeting --target")
    ro.add_argument(*flag("seed"), type=int, default=0, help="for --method random (training data uses seed 1234)")
    ro.add_argument(*flag("quiet"), action="store_true", help="no progress bar")
    ro.set_defaults(func=run_roles, check=check_roles)


def run_roles(args) -> int:
    from ..models import load_model, load_tokenizer
    from ..plan import HeadPlan, ModelShape
    from . import roles as R

    budget = SparseConfig(args.budget).budget  # checked with the other arguments by cli_checks.check_roles
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    shape = ModelShape.of(model.config)
    base = model.head_plan if getattr(model.config, "hydrahead", None) else HeadPlan.full_attention(model.config)
    meta = {"roles_method": args.method, "roles_target": args.target}
    if args.method in ("hardkuma", "l1"):
        from .train import RoleTrainingConfig, train_roles

        cfg = RoleTrainingConfig(method=args.method, target=args.target, steps=args.steps, budget=budget,
                                 samples=args.samples)
        result = train_roles(model, tokenizer, cfg, progress=not args.quiet)
        roles = R.roles_from_values(result.values, shape, None if args.threshold else args.target)
        last = result.history[-1]
        meta.update(roles_values=[[round(v, 4) for v in row] for row in result.values], roles_budget=budget)
        print(f"{args.method}: {args.steps} steps in {result.seconds:.1f} s; final relative MSE {last['mse']:.4f}, "
              f"expected retrieval share {last['density']:.3f} (target {args.target})", file=sys.stderr)
    elif args.method == "scores":
        from ..selection.scores import Scores

        scores = Scores.load(args.scores)
        if scores.shape != shape:
            raise DecodingError(f"{args.scores} scores a model with {scores.shape.describe()}, not {args.model}")
        roles = R.roles_from_scores(scores, args.target)
        meta["scores"] = str(args.scores)
    elif args.method == "random":
        roles, meta["seed"] = R.random_roles(shape, args.target, args.seed), args.seed
    else:
        roles = R.uniform_roles(shape)
    # the settings the roles were chosen for: `--plan` with this file decodes sparsely with no other flag
    plan = base.with_roles(roles, **meta).with_decode(budget=budget)
    out = plan.save(args.out)
    print(plan.summary())
    print(f"{plan.num_retrieval} of {shape.num_layers * shape.num_kv_heads} KV heads retrieval; wrote {out}")
    return 0
