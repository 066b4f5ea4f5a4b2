"""Mean ablation: the proof that the scores mean something. Replacing the top-k heads by their mean
output should hurt retrieval far more than replacing k random heads.

A head's mean is its output averaged over every real token of reference prompts of the evaluated task
(other samples than the evaluated ones), so an ablated head still writes a typical vector, only one that
carries nothing about this prompt.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ..evaluation import score_samples
from ..plan import ModelShape
from ..tasks import generate
from .heads import HeadSite
from .planning import random_heads


@torch.no_grad()
def head_means(model, tokenizer, task: str, length: int, num_samples: int = 16, seed: int = 10_000) -> list[torch.Tensor]:
    """Per layer, [H, D]: each head's output averaged over the real tokens of `num_samples` prompts."""
    device = next(model.parameters()).device
    sums: list[torch.Tensor] | None = None
    count = 0
    with HeadSite(model) as site:
        site.record = set(range(site.shape.num_layers))
        for sample in generate(task, tokenizer, length, num_samples, seed=seed):
            ids = torch.tensor([tokenizer(sample.prompt(), add_special_tokens=False)["input_ids"]], device=device)
            model(input_ids=ids, use_cache=False)
            heads = [site.recorded[i][0].sum(0) for i in range(site.shape.num_layers)]  # [H, D] each
            sums = heads if sums is None else [a + b for a, b in zip(sums, heads)]
            count += ids.shape[1]
    return [s / count for s in sums]


@contextlib.contextmanager
def mean_ablated(model, heads: list[tuple[int, int]], means: list[torch.Tensor]):
    """Within the block, the listed (layer, head)s output their mean at every position, prefill and decode."""
    by_layer: dict[int, list[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(layer, []).append(h)

    def ablate(layer: int, hs: list[int]):
        value = means[layer][hs]  # [len(hs), D]

        def patch(h: torch.Tensor) -> torch.Tensor:
            h = h.clone()
            h[:, :, hs] = value.to(h.dtype)
            return h

        return patch

    with HeadSite(model) as site:
        site.patches = {layer: ablate(layer, hs) for layer, hs in by_layer.items()}
        yield site


@dataclass
class AblationCurve:
    task: str
    length: int
    limit: int
    dense: float
    top: dict[int, float] = field(default_factory=dict)  # k -> score with the top-k heads ablated
    random: dict[int, list[float]] = field(default_factory=dict)  # k -> scores, one per random seed
    top_heads: list[list[int]] = field(default_factory=list)

    def table(self) -> str:
        seeds = len(next(iter(self.random.values()), []))
        lines = [
            f"| heads ablated (k) | top-k by score | random k (mean of {seeds}) | random min-max |",
            "|---:|---:|---:|---:|",
            f"| 0 | {self.dense:.1f} | {self.dense:.1f} | - |",
        ]
        for k in sorted(self.top):
            r = self.random.get(k, [])
            mean = sum(r) / len(r) if r else float("nan")
            span = f"{min(r):.1f}-{max(r):.1f}" if r else "-"
            lines.append(f"| {k} | {self.top[k]:.1f} | {mean:.1f} | {span} |")
        return "\n".join(lines)


def ablation_curve(model, tokenizer, ranking: list[tuple[int, int]], ks: list[int], random_seeds: int = 3,
                   task: str = "niah_single_1", length: int = 512, limit: int = 50, seed: int = 0,
                   progress: bool = True) -> AblationCurve:
    """Task score with the top-k heads of `ranking` mean-ablated vs k random heads, for each k."""
    shape = ModelShape.of(model.config)
    samples = generate(task, tokenizer, length, limit, seed=seed)
    means = head_means(model, tokenizer, task, length)

    def score(heads) -> float:
        with mean_ablated(model, heads, means):
            return score_samples(model, tokenizer, samples, progress=False).scores[task][length]

    curve = AblationCurve(task, length, limit, score([]), top_heads=[list(h) for h in ranking[: max(ks)]])
    from tqdm import tqdm

    for k in tqdm(ks, desc="ablation", disable=not progress, dynamic_ncols=True):
        curve.top[k] = score(ranking[:k])
        curve.random[k] = [score(random_heads(shape, k, seed=1000 * k + s)) for s in range(random_seeds)]
    return curve
