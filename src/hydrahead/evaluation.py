"""The evaluation harness: tasks x lengths (x needle depths) -> scores, a markdown table, a results
folder, plots. Follows lm-evaluation-harness conventions (`--model`, `--tasks`, `--limit`, `--seed`,
`--output_path`, a markdown table at the end, a new results folder per run)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HydraheadError
from .generation import greedy_generate
from .selfcheck import check_cached_decoding
from .tasks import Sample, generate, parse_tasks
from .tasks.base import TASKS, parse_depths, parse_lengths
from .tasks.ruler import ruler_metric
from .tasks.scoring import METRICS, postprocess_pred

DEFAULT_DEPTHS = (0.0, 25.0, 50.0, 75.0, 100.0)


@dataclass
class EvalResult:
    scores: dict[str, dict[int, float]]  # task -> length -> score (0-100)
    depth_scores: dict[str, dict[int, dict[float, float]]]  # task -> length -> depth -> score
    prefill_tokens_per_s: dict[str, dict[int, float]]
    records: list[dict] = field(default_factory=list)  # one per sample
    config: dict = field(default_factory=dict)
    overall: dict[str, float] = field(default_factory=dict)  # task -> score over all its samples (0-100)
    overall_column: bool = False  # for data files: one score per file beside its length columns

    def table(self) -> str:
        """A column per length; with `overall_column` and more than one length, an "all" column: the task's
        score over all its samples (one score per file of RULER's, whatever lengths its samples have)."""
        lengths = sorted({n for per in self.scores.values() for n in per})
        with_all = self.overall_column and len(lengths) > 1 and set(self.overall) >= set(self.scores)
        head = "| Task | " + " | ".join(str(n) for n in lengths) + (" | all" if with_all else "") + " |"
        rule = "|---|" + "---:|" * (len(lengths) + with_all)
        rows = []
        for task, per in self.scores.items():
            cells = [f"{per[n]:.1f}" if n in per else "-" for n in lengths]
            cells += [f"{self.overall[task]:.1f}"] if with_all else []
            rows.append(f"| {task} | " + " | ".join(cells) + " |")
        if len(self.scores) > 1:
            mean = [sum(p[n] for p in self.scores.values() if n in p) / max(1, sum(n in p for p in self.scores.values())) for n in lengths]
            mean += [sum(self.overall[t] for t in self.scores) / len(self.scores)] if with_all else []
            rows.append("| **mean** | " + " | ".join(f"{m:.1f}" for m in mean) + " |")
        return "\n".join([head, rule, *rows])

    def to_json(self) -> dict:
        def keys_to_str(d):
            return {str(k): keys_to_str(v) if isinstance(v, dict) else v for k, v in d.items()}

        return {
            "results": keys_to_str(self.scores),
            "depth_results": keys_to_str(self.depth_scores),
            "prefill_tokens_per_s": keys_to_str(self.prefill_tokens_per_s),
            "overall": self.overall,
            "config": self.config,
        }


def build_samples(tokenizer, tasks, lengths, limit: int, seed: int, depths=None) -> list[Sample]:
    """All samples of a run, generated (and so validated) before any model time is spent."""
    samples: list[Sample] = []
    for task in parse_tasks(tasks):
        for length in parse_lengths(lengths):
            if depths and task.supports_depth:
                per = [limit // len(depths) + (i < limit % len(depths)) for i in range(len(depths))]
                for d, n in zip(depths, per):
                    if n:
                        samples += generate(task, tokenizer, length, n, seed=seed, depth=d)
            else:
                samples += generate(task, tokenizer, length, limit, seed=seed)
    return samples


def score_samples(model, tokenizer, samples: list[Sample], batch_size: int = 8, progress: bool = True,
                  metric: str | None = None, max_batch_tokens: int = 16384, cache_factory=None):
    """Greedy generation and RULER scoring for each sample; returns an EvalResult without config.
    Long prompts get smaller batches (at most `max_batch_tokens` prompt tokens), which bounds memory."""
    from tqdm import tqdm

    if batch_size < 1:
        raise HydraheadError(f"--batch_size must be at least 1, got {batch_size}")
    groups: dict[tuple[str, int], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[(s.task, int(s.extra.get("max_length", s.length)))].append(s)
    scores: dict[str, dict[int, float]] = defaultdict(dict)
    depth_scores: dict[str, dict[int, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    speed: dict[str, dict[int, float]] = defaultdict(dict)
    records = []
    bar = tqdm(total=len(samples), desc="eval", disable=not progress, dynamic_ncols=True)
    overall: dict[str, list[float]] = defaultdict(list)
    for (task_name, length), group in groups.items():
        task = TASKS.get(task_name)
        tokens_to_generate = _answer_budget(task, group)
        sample_metric = METRICS[metric or (task.metric if task else ruler_metric(task_name))][1]
        group = sorted(group, key=lambda s: len(s.prompt()))
        per_sample, per_depth = [], defaultdict(list)
        prefill_tokens, prefill_s = 0, 0.0
        per_batch = max(1, min(batch_size, max_batch_tokens // max(1, length)))
        for i in range(0, len(group), per_batch):
            batch = group[i : i + per_batch]
            preds, n_tok, secs = greedy_generate(model, tokenizer, [s.prompt() for s in batch], tokens_to_generate,
                                                 cache_factory=cache_factory)
            prefill_tokens += n_tok
            prefill_s += secs
            for s, p in zip(batch, preds):
                value = sample_metric(postprocess_pred(p), s.outputs)
                per_sample.append(value)
                if s.depth is not None:
                    per_depth[s.depth].append(value)
                records.append({"task": task_name, "length": length, "depth": s.depth, "index": s.index,
                                "input": s.input, "answer_prefix": s.answer_prefix, "prediction": p,
                                "references": s.outputs, "score": value})
            bar.update(len(batch))
        scores[task_name][length] = round(100 * sum(per_sample) / len(per_sample), 2)
        overall[task_name] += per_sample
        for d, values in sorted(per_depth.items()):
            depth_scores[task_name][length][d] = round(100 * sum(values) / len(values), 2)
        speed[task_name][length] = round(prefill_tokens / max(prefill_s, 1e-9), 1)
    bar.close()
    return EvalResult(dict(scores), {k: dict(v) for k, v in depth_scores.items()}, dict(speed), records,
                      overall={t: round(100 * sum(v) / len(v), 2) for t, v in overall.items()})


def _answer_budget(task, group: list[Sample]) -> int:
    """Tokens to generate: what the samples carry (written by `generate`, or RULER's budget for files of
    RULER's tasks), else the task's own, else 64."""
    carried = [int(s.extra["tokens_to_generate"]) for s in group if s.extra.get("tokens_to_generate")]
    if carried:
        return max(carried)
    return task.tokens_to_generate if task else 64


def evaluate(model, tokenizer, tasks="niah_single_1", lengths=(512,), limit: int = 50, seed: int = 0,
             depths=None, batch_size: int = 8, progress: bool = True, cache_factory=None) -> EvalResult:
    """Evaluate a causal LM on generated tasks. `depths` (percentages) spreads each NIAH task's samples
    over those needle depths, which the depth x length heatmap needs."""
    if limit <= 0:
        raise HydraheadError(f"--limit must be positive, got {limit}")
    samples = build_samples(tokenizer, tasks, lengths, limit, seed, depths)
    if model is not None:
        check_cached_decoding(model)  # a cache that is silently not used would make every score noise
    result = score_samples(model, tokenizer, samples, batch_size, progress, cache_factory=cache_factory)
    result.config = {"tasks": [t.name for t in parse_tasks(tasks)], "lengths": parse_lengths(lengths),
                     "limit": limit, "seed": seed, "depths": list(depths) if depths else None, "batch_size": batch_size}
    if callable(getattr(cache_factory, "describe", None)):  # e.g. a quantized KV cache's format and window
        result.config["kv_cache"] = cache_factory.describe()
    return result


def write_results(result: EvalResult, output_path, name: str, plot: bool = False) -> Path:
    """Write metrics.json, samples.jsonl, config.json (and plots) into a new folder, all or nothing:
    everything goes to a '.partial' folder that is renamed only once it is complete."""
    from .atomic import final_of, new_results_dir

    with new_results_dir(output_path, name) as partial:
        (partial / "metrics.json").write_text(json.dumps(result.to_json(), indent=2))
        (partial / "config.json").write_text(json.dumps(result.config, indent=2))
        with (partial / "samples.jsonl").open("w") as f:
            for r in result.records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        (partial / "table.md").write_text(result.table() + "\n")
        if plot:
            from .plots import plot_results

            plot_results(result, partial, result.config.get("native_length"))
    return final_of(partial)


def header_line(model_path: str, result: EvalResult) -> str:
    c = result.config
    return (f"hf (pretrained={model_path}), tasks: {','.join(c.get('tasks', []))}, limit: {c.get('limit')}, "
            f"seed: {c.get('seed')}, batch_size: {c.get('batch_size')}")


__all__ = ["EvalResult", "evaluate", "score_samples", "build_samples", "write_results", "DEFAULT_DEPTHS"]
