"""The full scoring sweep of a model: per behaviour activation patching (query heads and KV groups),
path patching into the top receivers, optionally attribution patching first; then the retrieval
score baseline. Every finished chunk of work is written to a partial file, so a sweep stopped with
Ctrl-C (or killed) resumes where it stopped when run again with the same settings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..jsonfile import read_json, write_json_atomic
from ..plan import ModelShape
from ..transfer.config import DEFAULT_BEHAVIOURS
from .behaviours import SelectionError, get_behaviours
from .heads import attention_modules
from .patching import (
    DIRECTIONS,
    Unit,
    activation_patching,
    attribution_patching,
    group_units,
    head_units,
    prepare_runs,
)
from .path import path_patching
from .retrieval_score import retrieval_scores
from .scores import BehaviourScores, Scores

PARTIAL_FORMAT = "hydrahead.scores.partial/1"
MIN_GAP = 1e-3  # a logit-difference gap below this means the model does not do the behaviour at all


@dataclass
class ScoreConfig:
    behaviours: list[str] = field(default_factory=lambda: list(DEFAULT_BEHAVIOURS))
    length: int = 512
    num_pairs: int = 8
    seed: int = 0
    direction: str = "denoise"
    receivers: int = 4  # top heads by activation patching that path patching traces back from
    attribution_top: int | None = None  # if set: attribution patching first, real patching for its top-k only
    retrieval_samples: int = 8  # NIAH samples for the retrieval-score baseline (0: skip it)
    max_tokens: int = 16384  # tokens per forward when patched runs are batched

    def check(self) -> None:
        get_behaviours(self.behaviours)
        if self.direction not in DIRECTIONS:
            raise SelectionError(f"direction must be one of {DIRECTIONS}, not {self.direction!r}")
        for name in ("length", "num_pairs", "receivers", "max_tokens"):
            if getattr(self, name) < 1:
                raise SelectionError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.attribution_top is not None and self.attribution_top < 1:
            raise SelectionError(f"attribution_top must be at least 1, got {self.attribution_top}")


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".partial.json")


def read_partial(path: Path) -> dict:
    """The progress file of an interrupted sweep, or a clear error (a truncated one is not resumable)."""
    try:
        data = read_json(path, "partial scores file", SelectionError)
    except SelectionError as e:
        raise SelectionError(f"{e}; delete it to start the sweep over") from None
    if not isinstance(data, dict):
        raise SelectionError(f"{path} is not a partial scores file; delete it to start the sweep over")
    return data


class _Progress:
    """The partial file: what is done, written after every chunk of work."""

    def __init__(self, path: Path | None, header: dict, on_save: Callable[[int], None] | None):
        self.path, self.header, self.on_save = path, header, on_save
        self.effects: dict[str, dict[str, dict[str, float]]] = {}
        self.baselines: dict[str, list[float]] = {}
        self.retrieval: list | None = None
        if path is not None and path.is_file():
            data = read_partial(path)
            if data.get("format") != PARTIAL_FORMAT or {k: data.get(k) for k in header} != header:
                raise SelectionError(
                    f"{path} holds a sweep with other settings ({data.get('config')}); delete it, or rerun with "
                    "those settings to resume it"
                )
            self.effects, self.baselines, self.retrieval = data["effects"], data["baselines"], data["retrieval"]

    def stage(self, behaviour: str, stage: str) -> dict[str, float]:
        return self.effects.setdefault(behaviour, {}).setdefault(stage, {})

    def units_done(self) -> int:
        return sum(len(s) for b in self.effects.values() for s in b.values()) + (self.retrieval is not None)

    def save(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, {**self.header, "format": PARTIAL_FORMAT, "effects": self.effects,
                                          "baselines": self.baselines, "retrieval": self.retrieval})
        if self.on_save:
            self.on_save(self.units_done())


def _as_matrix(values: dict[str, float], units: list[Unit], rows: int) -> np.ndarray:
    return np.array([values[name] for name, _ in units]).reshape(rows, -1)


def score_heads(model, tokenizer, config: ScoreConfig | None = None, model_name: str = "",
                partial: str | Path | None = None, progress: bool = True,
                on_save: Callable[[int], None] | None = None) -> Scores:
    """Score every head of `model` (see the module docstring). `partial`: the resumable progress file."""
    from tqdm import tqdm

    config = config or ScoreConfig()
    config.check()
    attention_modules(model)  # a clear error for an unsupported model before any work
    shape = ModelShape.of(model.config)
    heads, groups = head_units(shape), group_units(shape)
    header = {"model": model_name, "shape": vars(shape), "config": asdict(config)}
    state = _Progress(Path(partial) if partial else None, header, on_save)

    top = config.attribution_top
    patched_heads = min(top, len(heads)) + len(heads) if top else len(heads)  # attribution counts every head
    per_behaviour = patched_heads + len(groups) + len(heads)
    total = per_behaviour * len(config.behaviours) + (1 if config.retrieval_samples else 0)
    bar = tqdm(total=total, initial=state.units_done(), desc="score heads", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()

    def run_stage(name: str, stage: str, units: list[Unit], work) -> dict[str, float]:
        """`work(todo, saved)` for the units not done yet; `saved` records and checkpoints each chunk."""
        done = state.stage(name, stage)
        todo = [u for u in units if u[0] not in done]
        if todo:
            def saved(chunk: dict[str, float]) -> None:
                done.update(chunk)
                state.save()
                bar.update(len(chunk))

            work(todo, saved)
        return done

    results = {
        b.name: _score_behaviour(model, tokenizer, b, config, state, run_stage) for b in get_behaviours(config.behaviours)
    }
    retrieval = None
    if config.retrieval_samples:
        if state.retrieval is None:
            state.retrieval = retrieval_scores(model, tokenizer, config.length, config.retrieval_samples,
                                               config.seed).tolist()
            state.save()
            bar.update(1)
        retrieval = np.array(state.retrieval)
    bar.close()
    return Scores(model_name, shape, asdict(config), results, retrieval, {}, round(time.perf_counter() - start, 2))


def _score_behaviour(model, tokenizer, behaviour, config: ScoreConfig, state: _Progress, run_stage) -> BehaviourScores:
    name = behaviour.name
    shape = ModelShape.of(model.config)
    heads, groups = head_units(shape), group_units(shape)
    batch = behaviour.batch(tokenizer, config.length, config.num_pairs, config.seed)
    runs = prepare_runs(model, batch, config.direction)
    clean_ld = float((runs.source_ld if config.direction == "denoise" else runs.base_ld).mean())
    corrupt_ld = float((runs.base_ld if config.direction == "denoise" else runs.source_ld).mean())
    if abs(runs.gap) < MIN_GAP:
        raise SelectionError(
            f"behaviour {name!r}: the model's logit difference is the same on clean and corrupted prompts "
            f"({clean_ld:.4g} vs {corrupt_ld:.4g}) at length {config.length}, so the model does not do this "
            "behaviour there and its head effects would be noise; drop it or use a shorter --length"
        )
    state.baselines[name] = [clean_ld, corrupt_ld]

    def patch(todo, saved):
        activation_patching(model, batch, runs, todo, config.max_tokens, saved)

    estimates: dict[str, float] = {}
    attribution = None
    candidates = heads
    if config.attribution_top:
        estimates = run_stage(name, "attribution", heads,
                              lambda todo, saved: saved(attribution_patching(model, batch, runs, todo)))
        attribution = _as_matrix(estimates, heads, shape.num_layers)
        candidates = sorted(heads, key=lambda u: -abs(estimates[u[0]]))[: config.attribution_top]
    # heads that attribution ruled out keep its estimate; the rest have the real effect
    activation = {**estimates, **run_stage(name, "activation", candidates, patch)}
    kv = run_stage(name, "activation_kv", groups, patch)
    order = sorted(heads, key=lambda u: -abs(activation[u[0]]))
    receivers = [(layer, hs[0]) for _, unit in order[: config.receivers] for layer, hs in unit.items()]
    path = run_stage(name, "path", heads, lambda todo, saved: path_patching(
        model, batch, runs, receivers, todo, config.max_tokens, saved))
    return BehaviourScores(
        clean_ld, corrupt_ld, _as_matrix(activation, heads, shape.num_layers), _as_matrix(kv, groups, shape.num_layers),
        _as_matrix(path, heads, shape.num_layers), receivers, attribution,
    )
