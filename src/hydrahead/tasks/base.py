"""The task protocol, the registry, and RULER's length fitting.

A task builds one example from a haystack *size* (in the task's own units: noise blocks, essay words,
distractor lines, list entries). `generate` then finds, by binary search, the largest size whose prompt
fits the requested length in tokens of the given tokenizer, exactly as RULER fits its haystacks, and
draws samples at that size.
"""

from __future__ import annotations

import functools
import random
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


from ..errors import HydraheadError


class TaskError(HydraheadError, ValueError):
    """Bad task input (unknown name, a length too short for the template, ...)."""


@dataclass
class Example:
    input: str  # the prompt, without the answer prefix
    outputs: list[str]  # reference strings, scored by the task's metric
    answer_prefix: str = ""  # appended to the input before generation, as in RULER's files
    answer: str = ""  # a full reference continuation after the prefix (the teacher trains on it)
    needle_span: tuple[int, int] | None = None  # char span, in `input`, of the asked needle (depth tests)


@dataclass
class Sample:
    """One line of a RULER-format JSONL file, plus what we know about how it was made."""

    index: int
    input: str
    outputs: list[str]
    length: int
    answer_prefix: str = ""
    task: str = ""
    depth: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def prompt(self) -> str:
        return self.input + self.answer_prefix

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return data


class Task:
    """One RULER-style task. Subclasses set the class attributes and implement `build`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    metric: ClassVar[str] = "string_match_all"
    tokens_to_generate: ClassVar[int] = 32
    supports_depth: ClassVar[bool] = False
    min_size: ClassVar[int] = 1
    variant_of: ClassVar[str | None] = None  # the RULER task this one replaces offline, if any

    def build(self, rng: random.Random, size: int, depth: float | None = None, words: str = "all") -> Example:
        raise NotImplementedError


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()


def parse_tasks(spec: str | list[str]) -> list[Task]:
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise TaskError("no task given")
    return [get_task(n) for n in names]


def parse_depths(depths) -> list[float]:
    """'0,50,100' -> [0.0, 50.0, 100.0]: needle depths in percent."""
    items = [x for x in depths.split(",") if x.strip()] if isinstance(depths, str) else list(depths)
    error = TaskError(f"--depths must be percentages in [0, 100], e.g. 0,50,100; got {depths!r}")
    try:
        out = [float(x) for x in items]
    except (TypeError, ValueError):
        raise error from None
    if not out or any(not 0 <= d <= 100 for d in out):  # also NaN
        raise error
    return out


def parse_lengths(lengths) -> list[int]:
    """Context lengths in tokens, from "512,1024" or a list; torch-free, so the CLI checks them at once."""
    if isinstance(lengths, str):
        lengths = [x for x in lengths.split(",") if x.strip()]
    try:
        out = [int(x) for x in lengths]
    except ValueError:
        raise HydraheadError(f"lengths must be integers, got {lengths!r}") from None
    if not out or any(n <= 0 for n in out):
        raise HydraheadError(f"lengths must be positive integers, got {lengths!r}")
    return out


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_tokens(tokenizer, example: Example) -> int:
    return count_tokens(tokenizer, example.input + example.answer_prefix)


def _tokens(task: Task, tokenizer, size: int, seed: int, depth: float | None, words: str) -> int:
    """The prompt tokens of the sample `fit_size` builds for a haystack of `size` units."""
    return prompt_tokens(tokenizer, task.build(random.Random(f"fit-{task.name}-{seed}-{size}"), size, depth, words))


def _fits(task: Task, tokenizer, length: int, size: int, seed: int, depth: float | None, words: str) -> bool:
    return _tokens(task, tokenizer, size, seed, depth, words) <= length - task.tokens_to_generate


def check_fits(task: Task, tokenizer, length: int, seed: int = 0, depth: float | None = None, words: str = "all") -> None:
    """TaskError when even the smallest haystack does not fit `length` tokens (one tokenization: the
    command line runs it before anything heavy is loaded)."""
    if not _fits(task, tokenizer, length, task.min_size, seed, depth, words):
        example = task.build(random.Random(0), task.min_size, depth, words)
        needed = prompt_tokens(tokenizer, example) + task.tokens_to_generate
        raise TaskError(
            f"length {length} is too short for task {task.name!r}: its template with the smallest haystack "
            f"needs about {needed} tokens (including {task.tokens_to_generate} to generate)"
        )


def fit_size(task: Task, tokenizer, length: int, seed: int = 0, depth: float | None = None, words: str = "all") -> int:
    """Largest haystack size whose prompt plus `tokens_to_generate` fits in `length` tokens."""
    budget = length - task.tokens_to_generate

    @functools.lru_cache(maxsize=None)
    def tokens(size: int) -> int:
        return _tokens(task, tokenizer, size, seed, depth, words)

    def fits(size: int) -> bool:
        return tokens(size) <= budget

    check_fits(task, tokenizer, length, seed, depth, words)
    lo = task.min_size
    hi = lo
    while fits(hi * 2):  # grow geometrically, then bisect
        # every haystack unit is at least a token: a haystack that stops growing in tokens, or holds far more
        # units than the budget has tokens, means an empty or broken tokenizer (the loop would never end)
        if hi * 2 > 8 * budget + 64 or (hi >= 64 and tokens(hi * 2) <= tokens(hi)):
            raise TaskError(f"the tokenizer makes no progress on task {task.name!r}: a haystack of {hi * 2} units "
                            f"encodes to {tokens(hi * 2)} tokens, no more than {hi} units")
        hi *= 2
    lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def generate(
    task: Task | str,
    tokenizer,
    length: int,
    num_samples: int,
    seed: int = 0,
    depth: float | None = None,
    words: str = "all",
) -> list[Sample]:
    """`num_samples` samples of `task`, each at most `length` tokens (prompt + tokens to generate) and
    as close to it as the haystack unit allows. Deterministic in (task, length, seed, depth)."""
    task = get_task(task) if isinstance(task, str) else task
    if depth is not None:
        if not task.supports_depth:
            raise TaskError(f"task {task.name!r} does not take a needle depth")
        if not 0 <= depth <= 100:
            raise TaskError(f"depth must be a percentage in [0, 100], got {depth}")
    size = fit_size(task, tokenizer, length, seed, depth, words)
    samples = []
    for index in range(num_samples):
        rng_seed = f"{task.name}-{length}-{seed}-{depth}-{words}-{index}"
        used = size
        while True:  # a sample with longer random keys may not fit at the fitted size: shrink it
            example = task.build(random.Random(rng_seed), used, depth, words)
            n = prompt_tokens(tokenizer, example) + task.tokens_to_generate
            if n <= length or used <= task.min_size:
                break
            used = max(task.min_size, used - max(1, used // 50))
        # the budget goes into the file, so that a file read back is answered as it was fitted
        extra = {"max_length": length, "answer": example.answer, "tokens_to_generate": task.tokens_to_generate}
        if example.needle_span is not None:
            extra["needle_span"] = list(example.needle_span)
        samples.append(
            Sample(index, example.input, example.outputs, n, example.answer_prefix, task.name, depth, extra)
        )
    return samples
