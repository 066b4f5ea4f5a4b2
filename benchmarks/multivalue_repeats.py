"""Where a model's niah_multivalue points go: values named twice, values not in the context, values missed.

niah_multivalue asks for the four values of one key; a sample scores the share of them in the answer. This script
greedy-decodes each model's answers (the evaluation's samples: evaluation seed 0) and counts, over all samples, the
7-digit values said, those said again (repeats), those that are none of the key's values, and the key's values
never said. Beside it, the `no_repeat` behaviour's logit difference (hydrahead.selection.behaviours.NoRepeat: two
of the four values already listed; target a value left, foil one said), mean over its pairs, on the clean and the
corrupted listing: a model that tracks what it has named has it far above 0 on the clean listing and far below on
the corrupted one.

    OMP_NUM_THREADS=1 python benchmarks/multivalue_repeats.py --models models/hydrahead-teacher-3m,runs/pipeline/long/model
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from hydrahead.evaluation import build_samples
from hydrahead.generation import greedy_generate
from hydrahead.models import load_model, load_tokenizer
from hydrahead.selection.behaviours import get_behaviours


def count(model, tokenizer, samples, batch: int = 5) -> dict[str, int]:
    preds: list[str] = []
    for i in range(0, len(samples), batch):
        preds += greedy_generate(model, tokenizer, [s.prompt() for s in samples[i : i + batch]], 40)[0]
    said = repeats = foreign = missed = 0
    for sample, pred in zip(samples, preds):
        values = re.findall(r"\d{7}", pred)
        said += len(values)
        repeats += len(values) - len(set(values))
        foreign += sum(v not in sample.outputs for v in set(values))
        missed += sum(v not in values for v in sample.outputs)
    return {"said": said, "repeats": repeats, "foreign": foreign, "missed": missed,
            "asked": sum(len(s.outputs) for s in samples)}


@torch.no_grad()
def no_repeat_difference(model, tokenizer, length: int, pairs: int) -> tuple[float, float]:
    batch = get_behaviours("no_repeat")[0].batch(tokenizer, length, pairs, seed=0)
    position_ids = (batch.mask.cumsum(-1) - 1).clamp(min=0)
    out = []
    for ids in (batch.clean, batch.corrupt):
        logits = model(input_ids=ids, attention_mask=batch.mask, position_ids=position_ids).logits[:, -1]
        diff = logits.gather(1, batch.target[:, None]) - logits.gather(1, batch.foil[:, None])
        out.append(float(diff.mean()))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="comma-separated model directories (the first gives the tokenizer)")
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--limit", type=int, default=20, help="niah_multivalue samples")
    ap.add_argument("--pairs", type=int, default=8, help="no_repeat pairs")
    args = ap.parse_args()
    paths = [Path(p.strip()) for p in args.models.split(",") if p.strip()]
    missing = [str(p) for p in paths if not (p / "config.json").is_file()]
    if missing:
        raise SystemExit(f"--models: no model directory at {', '.join(missing)}")
    if min(args.length, args.limit, args.pairs) < 1:
        raise SystemExit("--length, --limit and --pairs must be at least 1")

    tokenizer = load_tokenizer(paths[0])
    samples = build_samples(tokenizer, "niah_multivalue", [args.length], args.limit, seed=0)
    print(f"niah_multivalue @{args.length}, {args.limit} samples (4 values each); no_repeat logit difference, "
          f"mean of {args.pairs} pairs")
    print("| model | values said | repeats | not the key's | key's values missed | no_repeat LD clean | corrupted |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        model = load_model(path)
        c = count(model, tokenizer, samples)
        clean, corrupt = no_repeat_difference(model, tokenizer, args.length, args.pairs)
        print(f"| {path} | {c['said']} | {c['repeats']} | {c['foreign']} | {c['missed']} of {c['asked']} "
              f"| {clean:+.1f} | {corrupt:+.1f} |", flush=True)


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
