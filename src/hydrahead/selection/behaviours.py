"""Behaviours: clean / corrupted prompt pairs that differ in exactly what a head would have to retrieve.

A pair is two token sequences of the same length, aligned position by position, and two answer tokens:
`target` (what the clean prompt asks for) and `foil` (what the corrupted prompt asks for). The metric is
the logit difference `logit[target] - logit[foil]` at the last position: high on the clean run, low on
the corrupted one. When the two answers share a first token (" " before a number, say), that common
prefix is appended to both prompts, so the metric sits on the first token where they part.

Adding a behaviour is one small class: text behaviours corrupt a task sample (`corrupt`), token
behaviours build ids directly (`build`).
"""

from __future__ import annotations

import itertools
import random
import re
import string
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import HydraheadError
from ..tasks import Sample, generate
from ..tasks.niah import random_value
from ..tasks.words import random_key


class SelectionError(HydraheadError, ValueError):
    """Bad input to head selection (unknown behaviour, unsupported model, impossible ratio, ...)."""


@dataclass
class Pair:
    clean: list[int]
    corrupt: list[int]
    target: int  # the clean answer's token
    foil: int  # the corrupted answer's token


@dataclass
class PairBatch:
    """Pairs left-padded to one width; clean and corrupted rows share the mask."""

    clean: torch.Tensor  # [N, T]
    corrupt: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T]
    target: torch.Tensor  # [N]
    foil: torch.Tensor  # [N]

    def __len__(self) -> int:
        return self.clean.shape[0]

    @classmethod
    def collate(cls, pairs: list[Pair], pad_id: int) -> PairBatch:
        width = max(len(p.clean) for p in pairs)
        clean = torch.full((len(pairs), width), pad_id, dtype=torch.long)
        corrupt, mask = clean.clone(), torch.zeros_like(clean)
        for i, p in enumerate(pairs):
            clean[i, width - len(p.clean):] = torch.tensor(p.clean)
            corrupt[i, width - len(p.corrupt):] = torch.tensor(p.corrupt)
            mask[i, width - len(p.clean):] = 1
        target = torch.tensor([p.target for p in pairs])
        foil = torch.tensor([p.foil for p in pairs])
        return cls(clean, corrupt, mask, target, foil)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def text_pair(tokenizer, clean_prompt: str, corrupt_prompt: str, clean_answer: str, corrupt_answer: str) -> Pair | None:
    """A pair from texts, or None when the tokenizer does not keep the two prompts aligned."""
    clean, corrupt = _encode(tokenizer, clean_prompt), _encode(tokenizer, corrupt_prompt)
    if len(clean) != len(corrupt):
        return None
    a, b = _encode(tokenizer, clean_answer), _encode(tokenizer, corrupt_answer)
    j = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if j is None:
        return None
    return Pair(clean + a[:j], corrupt + a[:j], a[j], b[j])


class Behaviour:
    name: ClassVar[str]
    description: ClassVar[str] = ""

    def pairs(self, tokenizer, length: int, num_pairs: int, seed: int = 0) -> list[Pair]:
        raise NotImplementedError

    def batch(self, tokenizer, length: int, num_pairs: int, seed: int = 0) -> PairBatch:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return PairBatch.collate(self.pairs(tokenizer, length, num_pairs, seed), pad)


class TaskBehaviour(Behaviour):
    """Corrupts samples of a registered task. Draws spare samples, because a corruption can fail to
    keep the token counts equal under some tokenizers."""

    task: ClassVar[str]

    def corrupt(self, sample: Sample, rng: random.Random) -> tuple[str, str, str] | None:
        """(corrupted input, clean answer, corrupted answer), or None if this sample cannot be used."""
        raise NotImplementedError

    def pairs(self, tokenizer, length: int, num_pairs: int, seed: int = 0) -> list[Pair]:
        return first_pairs(self._candidates(tokenizer, length, num_pairs, seed), num_pairs, length, self.name,
                           "the corruption changes the token count under this tokenizer")

    def _candidates(self, tokenizer, length: int, num_pairs: int, seed: int) -> Iterator[Pair | None]:
        rng = random.Random(f"{self.name}-{length}-{seed}")
        for s in generate(self.task, tokenizer, length, 3 * num_pairs, seed=seed):
            made = self.corrupt(s, rng)
            if made is not None:
                corrupt_input, clean_answer, corrupt_answer = made
                yield text_pair(tokenizer, s.prompt(), corrupt_input + s.answer_prefix, clean_answer, corrupt_answer)


def _other_number(rng: random.Random, value: str) -> str:
    """A number of the same width whose first digit differs, so the answers part at their first digit."""
    first = rng.choice([d for d in "123456789" if d != value[0]])
    return first + "".join(rng.choice(string.digits) for _ in value[1:])


class Retrieval(TaskBehaviour):
    name = "retrieval"
    description = "niah_single_1: the needle's value is changed in the corrupted prompt"
    task = "niah_single_1"

    def corrupt(self, sample, rng):
        value = sample.outputs[0]
        if sample.input.count(value) != 1:
            return None
        other = _other_number(rng, value)
        return sample.input.replace(value, other), f" {value}.", f" {other}."


class MultiKey(TaskBehaviour):
    name = "multikey"
    description = "niah_multikey_1: the asked needle swaps its value with a distractor needle's"
    task = "niah_multikey_1"

    def corrupt(self, sample, rng):
        value = sample.outputs[0]
        numbers = [n for n in re.findall(r"\b\d{7}\b", sample.input) if n != value and n[0] != value[0]]
        if sample.input.count(value) != 1 or not numbers:
            return None
        other = rng.choice(numbers)
        # the swap keeps every number in the context, so only the key tells the answer apart
        swapped = sample.input.replace(value, "\0").replace(other, value).replace("\0", other)
        return swapped, f" {value}.", f" {other}."


class VariableTracking(TaskBehaviour):
    name = "vt"
    description = "vt: the chain's first variable is renamed in the corrupted prompt"
    task = "vt"

    def corrupt(self, sample, rng):
        first = sample.outputs[0]
        letters = [c for c in string.ascii_uppercase if c != first[0]]
        other = rng.choice(letters) + first[1:]
        if re.search(rf"\b{other}\b", sample.input):
            return None
        renamed = re.sub(rf"\b{first}\b", other, sample.input)
        return renamed, " ".join(sample.outputs), " ".join([other, *sample.outputs[1:]])


class Induction(Behaviour):
    """A span of random keys and numbers, a newline, then the span again, cut before one of its words:
    the model must copy the word that followed in the first copy. The corrupted prompt changes only
    that word in the first copy. (Made of words, not random token ids, because a model copies text.)"""

    name = "induction"
    description = "a repeated span of keys and numbers; the word to copy is changed in the first copy"

    def pairs(self, tokenizer, length: int, num_pairs: int, seed: int = 0) -> list[Pair]:
        if length < 32:
            raise SelectionError(f"behaviour 'induction' needs a length of at least 32 tokens, got {length}")
        rng = random.Random(f"induction-{length}-{seed}")
        out: list[Pair] = []
        for _ in range(20 * num_pairs):
            parts = self._span(tokenizer, rng, (length - 2) // 2)
            j = rng.randrange(len(parts) // 2, len(parts))
            other = _word_like(rng, parts[j])
            corrupted = [*parts[:j], other, *parts[j + 1:]]
            second = "\n " + " ".join(parts[:j])
            pair = text_pair(tokenizer, " " + " ".join(parts) + second, " " + " ".join(corrupted) + second,
                             " " + parts[j], " " + other)
            if pair is not None and len(pair.clean) <= length:
                out.append(pair)
            if len(out) == num_pairs:
                return out
        raise SelectionError(f"behaviour 'induction': could not build {num_pairs} aligned pairs at length {length}")

    @staticmethod
    def _span(tokenizer, rng: random.Random, budget: int) -> list[str]:
        parts: list[str] = []
        while True:
            word = _word_like(rng, "x" if rng.random() < 0.5 else "0")
            if len(_encode(tokenizer, " " + " ".join([*parts, word]))) > budget:
                return parts
            parts.append(word)


class NoRepeat(Behaviour):
    """niah_multivalue, its answer begun: two of the key's four values are already listed, and the model must name
    one it has not said. The corrupted answer lists another pair, so the target (a value left in the clean run)
    is said already and the foil (said in the clean run) is left. A hybrid that retrieves every value but forgets
    which it has named repeats one (docs/transfer.md); this asks which heads keep track of it."""

    name = "no_repeat"
    description = "niah_multivalue, two values already listed; the corrupted listing names another value instead"
    LISTING_TOKENS: ClassVar[int] = 32  # ", ".join of two 7-digit values, at worst a token per character

    def pairs(self, tokenizer, length: int, num_pairs: int, seed: int = 0) -> list[Pair]:
        return first_pairs(self._candidates(tokenizer, length, num_pairs, seed), num_pairs, length, self.name,
                           "the listings change the token count under this tokenizer")

    def _candidates(self, tokenizer, length: int, num_pairs: int, seed: int) -> Iterator[Pair | None]:
        rng = random.Random(f"{self.name}-{length}-{seed}")
        # the two listed values and the answer's shared first tokens come on top of the sample
        for sample in generate("niah_multivalue", tokenizer, length - self.LISTING_TOKENS, 3 * num_pairs, seed=seed):
            first, said, left, *_ = rng.sample(sample.outputs, len(sample.outputs))
            if len({v[0] for v in (said, left)}) < 2:  # the answers must part at their first digit
                continue
            clean, corrupt = f" {first}, {said},", f" {first}, {left},"
            yield text_pair(tokenizer, sample.prompt() + clean, sample.prompt() + corrupt, f" {left}", f" {said}")


class CommonWords(Behaviour):
    """cwe, its answer begun: three of the ten common words are listed, and the model must name another. The
    corrupted list trades counts between a common word not yet named (the target, four times in the clean list)
    and a word seen once (the foil): three of the target's entries hold the foil, so the foil is the common one.
    Only the counts tell the two apart, so the heads this finds are the ones that carry how often a word was
    seen; the hybrids that keep the other skills lose cwe (docs/transfer.md)."""

    name = "common_words"
    description = "cwe, three common words listed; the corrupted list gives a common word's count to a word seen once"
    LISTING = 3  # common words already named in the answer
    LISTING_TOKENS: ClassVar[int] = 24  # " 1. w 2. w 3. w 4." at a few tokens a word, on top of the sample
    ENTRY = re.compile(r"(\d+)\. (\S+)")

    def pairs(self, tokenizer, length: int, num_pairs: int, seed: int = 0) -> list[Pair]:
        return first_pairs(self._candidates(tokenizer, length, num_pairs, seed), num_pairs, length, self.name,
                           "the traded words change the token count under this tokenizer")

    def _candidates(self, tokenizer, length: int, num_pairs: int, seed: int) -> Iterator[Pair | None]:
        rng = random.Random(f"{self.name}-{length}-{seed}")
        for sample in generate("cwe", tokenizer, length - self.LISTING_TOKENS, 3 * num_pairs, seed=seed):
            counts = Counter(m.group(2) for m in self.ENTRY.finditer(sample.input))
            *listed, target = rng.sample(sample.outputs, self.LISTING + 1)
            # a foil of the target's token count keeps the two lists aligned position by position
            width = len(_encode(tokenizer, f" {target}"))
            once = sorted(w for w, n in counts.items() if n == 1 and len(_encode(tokenizer, f" {w}")) == width)
            if not once or counts[target] < 2:
                continue
            foil = rng.choice(once)
            kept = rng.randrange(counts[target])  # the one entry of the target the corrupted list keeps
            seen = itertools.count()  # the target's entries, in order

            def trade(m: re.Match) -> str:
                if m.group(2) != target or next(seen) == kept:
                    return m.group(0)
                return f"{m.group(1)}. {foil}"

            corrupted = self.ENTRY.sub(trade, sample.input)
            listing = " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)) + f" {self.LISTING + 1}."
            yield text_pair(tokenizer, sample.prompt() + listing, corrupted + sample.answer_prefix + listing,
                            f" {target}", f" {foil}")


def first_pairs(candidates: Iterable[Pair | None], num_pairs: int, length: int, name: str, why: str) -> list[Pair]:
    """The first `num_pairs` candidates that were built (not None) and fit in `length` tokens, or a clear error."""
    out: list[Pair] = []
    for pair in candidates:
        if pair is not None and len(pair.clean) <= length:
            out.append(pair)
            if len(out) == num_pairs:
                return out
    raise SelectionError(f"behaviour {name!r}: only {len(out)} of {num_pairs} pairs could be built at length {length} "
                         f"({why})")


def _word_like(rng: random.Random, like: str) -> str:
    """A fresh key ("adj-noun") or 7-digit number, of the same kind as `like`."""
    return random_value(rng, "numbers") if like[0].isdigit() else random_key(rng)


BEHAVIOURS: dict[str, type[Behaviour]] = {cls.name: cls for cls in (Retrieval, MultiKey, Induction, VariableTracking,
                                                                 NoRepeat, CommonWords)}


def get_behaviours(spec: str | list[str]) -> list[Behaviour]:
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise SelectionError("no behaviour given")
    unknown = [n for n in names if n not in BEHAVIOURS]
    if unknown:
        raise SelectionError(f"unknown behaviour {unknown[0]!r}; known behaviours: {', '.join(BEHAVIOURS)}")
    return [BEHAVIOURS[n]() for n in names]
