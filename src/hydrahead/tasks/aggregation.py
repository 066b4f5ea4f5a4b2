"""Common and frequent word extraction with RULER's wording (common_words_extraction.py,
freq_words_extraction.py)."""

from __future__ import annotations

import functools
import random
import string

from .base import Example, Task, register
from .words import word_pool

CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?"
)
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
    "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"


@functools.lru_cache(maxsize=None)
def _cwe_words(split: str) -> tuple[str, ...]:
    return tuple(sorted(set(word_pool("nouns", split) + word_pool("adjectives", split) + word_pool("verbs", split))))


def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


@register
class CommonWords(Task):
    name = "cwe"
    description = "common word extraction: the 10 words repeated most in a numbered list (zero-shot variant)"
    variant_of = "cwe (RULER prepends a one-shot list that alone fills a 512-token context here)"
    tokens_to_generate = 64
    min_size = 11
    num_cw = 10
    fewshot = False

    def _list(self, rng: random.Random, num_words: int, freq_cw: int, freq_ucw: int, split: str):
        chosen = rng.sample(_cwe_words(split), num_words)
        common, uncommon = chosen[: self.num_cw], chosen[self.num_cw :]
        entries = common * freq_cw + uncommon * freq_ucw
        rng.shuffle(entries)
        return _numbered(entries), common

    def build(self, rng: random.Random, size: int, depth: float | None = None, words: str = "all") -> Example:
        # RULER's setting below 4096 tokens: a one-shot list of 20 words (3x / 1x), then the real list (6x / 1x);
        # the zero-shot variant repeats common words 4x so that the shortest list fits in 512 tokens
        ctx, answer = self._list(rng, size, 6 if self.fewshot else 4, 1, words)
        text = CWE_TEMPLATE.format(context=ctx)
        if self.fewshot:
            shot_ctx, shot_answer = self._list(rng, 20, 3, 1, words)
            text = CWE_TEMPLATE.format(context=shot_ctx) + CWE_PREFIX + " " + _numbered(shot_answer) + "\n" + text
        return Example(text, answer, CWE_PREFIX, " " + _numbered(answer))


@register
class CommonWordsFewshot(CommonWords):
    name = "cwe_fewshot"
    description = "common word extraction with RULER's one-shot list (needs about 1k tokens with our tokenizer)"
    variant_of = None
    tokens_to_generate = 120
    fewshot = True


@register
class FrequentWords(Task):
    name = "fwe"
    description = "frequent word extraction: the 3 most frequent coded words of a Zipf-distributed text"
    tokens_to_generate = 50
    min_size = 20
    alpha = 2.0
    word_len = 6  # RULER's coded_wordlen
    # RULER's vocabulary is max_seq_length // 50 words (81 at 4k, 10 at 512). With the teacher's tokenizer a
    # coded text averages about 2.5 tokens a word (most words are the noise "..."), so one vocabulary word per
    # 20 words of text is RULER's count (84 at 4k), without passing the length to build()
    words_per_vocab_word = 20
    min_vocab = 10  # never fewer than RULER's 512-token vocabulary (the noise word and 3 answers among them)

    def vocab_size(self, size: int) -> int:
        return max(self.min_vocab, size // self.words_per_vocab_word)

    def build(self, rng: random.Random, size: int, depth: float | None = None, words: str = "all") -> Example:
        from scipy.special import zeta

        vocab: set[str] = set()
        while len(vocab) < self.vocab_size(size):
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=self.word_len)))
        ordered = sorted(vocab)
        rng.shuffle(ordered)
        ordered[0] = "..."  # the most frequent word is noise, as in RULER ("ignore the dots")
        ranks = range(1, len(ordered) + 1)
        counts = [int(size * k**-self.alpha / zeta(self.alpha)) for k in ranks]
        text = [w for w, c in zip(ordered, counts) for _ in range(c)]
        rng.shuffle(text)
        answer = ordered[1:4]
        return Example(FWE_TEMPLATE.format(context=" ".join(text)), answer, FWE_PREFIX, " " + ", ".join(answer) + ".")
