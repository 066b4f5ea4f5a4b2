"""The HydraHead paper's comparison in miniature, on the shipped teacher.

Every hybrid variant gets the same three stages with the same token budget (align, distill, long
context), then the same evaluation: niah_single_1, niah_multikey_1, niah_multivalue and vt at 1x-16x
the native length, and a "general" metric at native length (held-out next-token loss on the corpus
mixture, vt and cwe). Variants: the original Transformer (untrained further), head-wise 7:1 with
interpretability-chosen heads (trained from two seeds), with random heads (three plans), by retrieval
score, layer-wise 3:1, all-GDN, all-FA through the same stages (a control: the training alone), and the
fusion ablation (concat, gate) on the 7:1 interp plan. The "after align" column is the mean retrieval
score at native length right after stage 1, where the choice of heads has had the least training to
make up for. Each variant's runs are kept in --out and reused, so the script can be stopped and run
again, and several copies of the same command started side by side share the variants out between them
(on 2 cores: two copies with OMP_NUM_THREADS=1).

    python benchmarks/transfer_comparison.py --out runs/comparison            # the table of docs/transfer.md
    python benchmarks/transfer_comparison.py --quick --out runs/comparison-q  # minutes, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from hydrahead.evaluation import evaluate, new_results_dir
from hydrahead.jsonfile import write_json_atomic
from hydrahead.models import load_causal_lm, load_model
from hydrahead.plan import HeadPlan, ModelShape
from hydrahead.selection import ScoreConfig, Scores, make_plan, score_heads
from hydrahead.transfer.data import packed_batch
from hydrahead.transfer.pipeline import PipelineConfig, train_hybrid

RETRIEVAL_TASKS = "niah_single_1,niah_multikey_1,niah_multivalue,vt"
GENERAL_TASKS = "vt,cwe"
HELDOUT_SEED = 10_000  # batches the training never draws (training uses seed 0, steps from 0)


def variants(scores: Scores, shape: ModelShape, random_seeds: int, train_seeds: int) -> dict[str, tuple[HeadPlan | None, dict]]:
    interp = make_plan(shape, "interp", "7:1", "query", scores=scores)
    out: dict[str, tuple[HeadPlan | None, dict]] = {"original": (None, {}), "head-wise 7:1 interp": (interp, {})}
    for seed in range(1, train_seeds):  # the same plan trained again from another seed: the training noise
        out[f"head-wise 7:1 interp (train seed {seed})"] = (interp, {"train_seed": seed})
    for seed in range(random_seeds):
        out[f"head-wise 7:1 random (seed {seed})"] = (make_plan(shape, "random", "7:1", seed=seed), {})
    # controls without any GDN head, through the same three stages: every head FA as the hybrids' FA heads
    # are built (RoPE dropped, log-length query scale), and every head FA with RoPE kept (the training alone)
    every_head = HeadPlan(shape, [list(range(shape.num_heads)) for _ in range(shape.num_layers)], "kv",
                          {"strategy": "full_attention"})
    out["all FA (NoPE + log-scale), same three stages"] = (every_head, {})
    out["all FA (RoPE), same three stages"] = (every_head, {"fa_position": "rope"})
    out["head-wise 7:1 retrieval score"] = (make_plan(shape, "retrieval_score", "7:1", scores=scores), {})
    out["layer-wise 3:1"] = (make_plan(shape, "layerwise", "3:1"), {})
    out["all GDN"] = (HeadPlan(shape, [[] for _ in range(shape.num_layers)], "kv", {"strategy": "all_gdn"}), {})
    # (HeadPlan.all_gdn takes a model config; the scores carry only the shape)
    out["head-wise 7:1 interp, concat fusion"] = (interp, {"fusion": "concat"})
    out["head-wise 7:1 interp, gate fusion"] = (interp, {"fusion": "gate"})
    return out


@torch.no_grad()
def heldout_loss(model, tokenizer, length: int, batches: int = 4) -> float:
    losses = []
    for step in range(batches):
        ids = packed_batch(tokenizer, HELDOUT_SEED, step, length, 4)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        losses.append(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item())
    return sum(losses) / len(losses)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="models/hydrahead-teacher-3m")
    ap.add_argument("--out", default="runs/comparison")
    ap.add_argument("--results", default="results/comparison")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--random_seeds", type=int, default=3, help="random 7:1 plans, each trained with seed 0")
    ap.add_argument("--train_seeds", type=int, default=2, help="trainings of the interp 7:1 plan (seeds 0..N-1)")
    ap.add_argument("--limit", type=int, help="samples per task and length (default 20; quick 5)")
    ap.add_argument("--only", help="comma-separated substrings: run only the variants whose name has one")
    ap.add_argument("--render", action="store_true", help="train nothing: tabulate the variants measured so far")
    args = ap.parse_args()

    cfg = PipelineConfig.quick(teacher=args.teacher, out=args.out) if args.quick else PipelineConfig(
        teacher=args.teacher, out=args.out, limit=20)
    if args.limit:
        cfg.limit = args.limit
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher, tokenizer = load_causal_lm(args.teacher)
    native = int(teacher.config.max_position_embeddings)
    scores_path = out / "scores.json"
    if not scores_path.exists():
        config = ScoreConfig(behaviours=cfg.behaviours, length=native, num_pairs=cfg.num_pairs, seed=cfg.seed)
        score_heads(teacher, tokenizer, config, args.teacher).save(scores_path)
    scores = Scores.load(scores_path)
    shape = ModelShape.of(teacher.config)
    lengths = [native * f for f in cfg.factors]

    rows = {}
    for name, (plan, options) in variants(scores, shape, args.random_seeds, args.train_seeds).items():
        folder = out / slug(name)
        row_path = folder / "row.json"
        selected = not args.only or any(s.strip() in name for s in args.only.split(","))
        if row_path.exists():  # measured before (maybe by another process): reuse, so runs can be split and resumed
            row = json.loads(row_path.read_text())
            if row.get("limit") == cfg.limit and row.get("lengths") == lengths:
                rows[name] = row
                continue
            print(f"{row_path} was measured with other settings: measuring again", flush=True)
        if not selected or args.render:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if not claim(folder):
            print(f"== {name}: another process is on it; skipped", flush=True)
            continue
        start = time.perf_counter()
        if plan is None:
            model = teacher
        else:
            plan.save(folder / "plan.json")
            print(f"== {name}: {plan.summary().splitlines()[1].strip()}", flush=True)
            options = dict(options)
            train_cfg = replace(cfg, seed=options.pop("train_seed", cfg.seed))  # evaluation keeps cfg.seed
            model = load_model(train_hybrid(train_cfg, folder / "plan.json", folder, native, options, progress=True))
        retrieval = evaluate(model, tokenizer, RETRIEVAL_TASKS, lengths, cfg.limit, cfg.seed, progress=False)
        general = evaluate(model, tokenizer, GENERAL_TASKS, [native], cfg.limit, cfg.seed, progress=False)
        kv = (plan or HeadPlan.full_attention(teacher.config)).kv_bytes_per_token()
        row = {"kv_bytes_per_token": kv, "retrieval": retrieval.scores, "general": general.scores,
               "heldout_loss": round(heldout_loss(model, tokenizer, native), 4),
               "minutes": round((time.perf_counter() - start) / 60, 1), "limit": cfg.limit, "lengths": lengths}
        rows[name] = json.loads(json.dumps(row))  # the same string-keyed form a reused row has
        write_json_atomic(row_path, rows[name])
        (folder / "claim").unlink()
        print(f"{name}: {json.dumps(rows[name])}", flush=True)

    for name, row in rows.items():  # where the head choice matters most: right after stage 1, at native length
        align = out / slug(name) / "align" / "model"
        if "after_align" not in row and align.is_dir():
            result = evaluate(load_model(align), tokenizer, RETRIEVAL_TASKS, [native], cfg.limit, cfg.seed, progress=False)
            row["after_align"] = json.loads(json.dumps(result.scores))
            write_json_atomic(out / slug(name) / "row.json", row)

    folder = new_results_dir(args.results, "comparison")
    folder.mkdir(parents=True)
    table = render(rows, lengths)
    (folder / "comparison.json").write_text(json.dumps({"config": vars(cfg), "rows": rows}, indent=1, default=str))
    (folder / "comparison.md").write_text(table + "\n")
    plot(rows, lengths, folder / "comparison.png")
    print(table)
    print(f"results: {folder}")


def claim(folder: Path) -> bool:
    """Take a variant for this process, so that several processes started with the same command share the
    variants out between them. A claim whose process is gone (killed) is taken over."""
    path = folder / "claim"
    try:
        owner = int(path.read_text())
        os.kill(owner, 0)
        return owner == os.getpid()
    except FileNotFoundError:
        pass
    except (ValueError, ProcessLookupError):
        path.unlink(missing_ok=True)  # its process was killed
    tmp = folder / f"claim.{os.getpid()}"
    tmp.write_text(str(os.getpid()))
    try:
        os.link(tmp, path)  # atomic: fails if another process claimed it first
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def plot(rows: dict, lengths: list[int], path: Path) -> Path:
    """Two panels against context length: the mean of the four retrieval tasks, and niah_single_1."""
    from hydrahead.plots import _pyplot, length_axis

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), sharey=True)
    keys = [str(n) for n in lengths]
    for i, (name, r) in enumerate(rows.items()):
        style = {"color": "black", "linewidth": 2.5} if name == "original" else {"color": plt.cm.tab20(i % 20)}
        if "random" in name:
            style["linestyle"] = "--"
        mean = [sum(per[k] for per in r["retrieval"].values()) / len(r["retrieval"]) for k in keys]
        axes[0].plot(lengths, mean, marker="o", label=f"{name} ({r['kv_bytes_per_token']} B/token)", **style)
        axes[1].plot(lengths, [r["retrieval"]["niah_single_1"][k] for k in keys], marker="o", **style)
    for ax, title in zip(axes, ("mean of niah_single_1, niah_multikey_1, niah_multivalue, vt", "niah_single_1")):
        length_axis(ax, lengths, lengths[0], label=None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("context length (tokens; dotted: the teacher's native length)")
    axes[0].set_ylabel("score (%)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.subplots_adjust(bottom=0.12 + 0.045 * -(-len(rows) // 3))  # room for the legend's rows
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def slug(name: str) -> str:
    return name.replace(" ", "_").replace(":", "to").replace(",", "").replace("(", "").replace(")", "")


def render(rows: dict, lengths: list[int]) -> str:
    native, lengths = str(lengths[0]), [str(n) for n in lengths]  # rows are JSON: lengths are string keys
    head = ("| variant | KV B/token | after align @native | " + " | ".join(f"retrieval @{n}" for n in lengths)
            + " | retrieval, all lengths | niah_single_1 @max | vt @native | cwe @native | held-out loss |")
    lines = [head, "|---|---:|---:|" + "---:|" * (len(lengths) + 5)]
    for name, r in rows.items():
        mean = [sum(per[n] for per in r["retrieval"].values()) / len(r["retrieval"]) for n in lengths]
        aligned = r.get("after_align")
        aligned = f"{sum(per[native] for per in aligned.values()) / len(aligned):.1f}" if aligned else "-"
        lines.append(
            f"| {name} | {r['kv_bytes_per_token']} | {aligned} | " + " | ".join(f"{m:.1f}" for m in mean)
            + f" | **{sum(mean) / len(mean):.1f}** | {r['retrieval']['niah_single_1'][lengths[-1]]:.1f} | {r['general']['vt'][native]:.1f}"
            f" | {r['general']['cwe'][native]:.1f} | {r['heldout_loss']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
