"""The command-line side of sparse decoding: the `--sparse_decode` options of `eval` / `generate`, and
`hydrahead roles` (decode roles learned with gates, or from scores, at random, or by the uniform rule)."""

from __future__ import annotations

import contextlib
import sys

from .config import DecodingError, SparseConfig

ROLE_METHODS = ("hardkuma", "l1", "scores", "random", "uniform")


def add_sparse_args(parser) -> None:
    from ..cli_help import flag

    group = parser.add_argument_group("sparse decoding (LycheeDecode)")
    group.add_argument(*flag("sparse_decode"), action="store_true",
                       help="decode with retrieval heads selecting tokens and sparse heads reusing them")
    group.add_argument(*flag("budget"), help="tokens per sparse head and step: a count or a share of the context "
                                             "(0.1) (default: 4096)")
    group.add_argument(*flag("roles"), help="a plan JSON with decode roles (`hydrahead roles`) (default: layer 0 and "
                                            "the middle layer retrieval)")
    group.add_argument(*flag("selection"), choices=["token", "block"], default="token",
                       help="top-k tokens or blocks of 64")
    group.add_argument(*flag("sink"), type=int, default=4, help="first tokens every selection keeps")
    group.add_argument(*flag("recent"), type=int, default=32, help="last tokens every selection keeps")
    group.add_argument(*flag("dense_every"), type=int, help="a dense correction step every N tokens (default: never)")


def sparse_config(args) -> SparseConfig | None:
    """The checked settings (before any model is loaded), or None without --sparse_decode."""
    if not args.sparse_decode:
        used = [flag for flag, value in (("--budget", args.budget), ("--roles", args.roles), ("--dense_every", args.dense_every))
                if value is not None]
        if used:
            raise DecodingError(f"{used[0]} only applies with --sparse_decode")
        return None
    if getattr(args, "kv_format", None):
        raise DecodingError("--sparse_decode does not combine with --kv_format yet: it gathers from a plain KV cache")
    config = SparseConfig(args.budget if args.budget is not None else 4096, args.selection, sink=args.sink,
                          recent=args.recent, dense_every=args.dense_every)
    if args.roles is not None:
        from ..plan import HeadPlan

        if HeadPlan.load(args.roles).decode_roles is None:
            raise DecodingError(f"{args.roles} has no decode roles; make a plan with `hydrahead roles`")
    return config


def sparse_context(model, args, config: SparseConfig | None):
    """A `sparse_decoding` block for the model, or a no-op without --sparse_decode."""
    if config is None:
        return contextlib.nullcontext(None)
    from .sparse import sparse_decoding

    return sparse_decoding(model, args.roles, config=config)


def describe(config: SparseConfig, args, state) -> str:
    roles = args.roles or "uniform rule (layer 0 + middle layer retrieval)"
    read = f"; KV read per decode step {100 * state.stats.read_fraction:.1f}% of dense" if state and state.stats.steps else ""
    return f"sparse decode: budget {config.budget}, {config.mode} selection, roles {roles}{read}"


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
    plan = base.with_roles(roles, **meta)
    out = plan.save(args.out)
    print(plan.summary())
    print(f"{plan.num_retrieval} of {shape.num_layers * shape.num_kv_heads} KV heads retrieval; wrote {out}")
    return 0
