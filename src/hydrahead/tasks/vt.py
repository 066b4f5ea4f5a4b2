"""Variable tracking with current RULER's wording and layout (scripts/data/synthetic/variable_tracking.py,
2025 on: "assigned", one noise block or assignment per line), including its one-shot example (RULER's
default `add_fewshot`), which is built small here so that it fits at 512. `vt_ruler2024` keeps the layout of
RULER before May 2025 ("assgined", noise blocks joined by a space after each newline), for files made by
those scripts and for comparing with results made on them."""

from __future__ import annotations

import random
import string

from .base import Example, Task, register
from .words import NOISE

TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
ANSWER_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, "
    "{num_v} variables are assigned the value {query}, they are: "
)
# RULER's spelling before May 2025, which files made by its older scripts carry
ANSWER_PREFIX_2024 = ANSWER_PREFIX.replace("assigned", "assgined")


def _chains(rng: random.Random, num_chains: int, num_hops: int, name_len: int) -> tuple[list[list[str]], list[list[str]]]:
    names: list[str] = []
    while len(names) < num_chains * (num_hops + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=name_len))
        if name not in names:
            names.append(name)
    all_vars, all_chains = [], []
    for c in range(num_chains):
        chain_vars = names[c * (num_hops + 1) : (c + 1) * (num_hops + 1)]
        chain = [f"VAR {chain_vars[0]} = {rng.randint(10000, 99999)}"]
        chain += [f"VAR {chain_vars[j + 1]} = VAR {chain_vars[j]} " for j in range(num_hops)]
        all_vars.append(chain_vars)
        all_chains.append(chain)
    return all_vars, all_chains


def vt_example(rng: random.Random, num_noises: int, num_chains: int, num_hops: int, name_len: int,
               layout: str = "current") -> Example:
    """layout "current": RULER's lines joined by newlines; "2024": each noise block ends in a newline and
    everything is joined by spaces (so a space follows each newline), and the answer prefix says "assgined"."""
    variables, chains = _chains(rng, num_chains, num_hops, name_len)
    end = "\n" if layout == "2024" else ""
    sentences = [NOISE + end] * num_noises
    if len(sentences) <= len(chains[0]):  # too few noise blocks (our small one-shot): split them into sentences
        sentences = [s + "." if s.strip() else s for block in sentences for s in block.split(".")]
        sentences = [s.strip() for s in sentences if s.strip()] if layout != "2024" else sentences
    for chain in chains:
        chain = chain[: max(1, len(sentences) - 1)]
        positions = sorted(rng.sample(range(len(sentences)), len(chain)))
        for j, pos in enumerate(positions):
            sentences.insert(pos + j, chain[j])
    context = (" " if layout == "2024" else "\n").join(sentences).replace(". \n", ".\n")
    value = chains[0][0].split("=")[-1].strip()
    prefix = (ANSWER_PREFIX_2024 if layout == "2024" else ANSWER_PREFIX).format(num_v=num_hops + 1, query=value)
    answer = " ".join(variables[0])
    return Example(TEMPLATE.format(context=context, query=value), list(variables[0]), prefix, answer)


@register
class VariableTracking(Task):
    name = "vt"
    description = "variable tracking: 1 chain of 4 hops (VAR X = VAR Y), all 5 names asked; one-shot example"
    tokens_to_generate = 30
    num_chains = 1
    num_hops = 4
    fewshot = True
    icl_noises = 2  # RULER fits its one-shot example to 500 tokens; ours must fit inside a 512 context
    layout = "current"

    def build(self, rng: random.Random, size: int, depth: float | None = None, words: str = "all") -> Example:
        main = vt_example(rng, size, self.num_chains, self.num_hops, name_len=5, layout=self.layout)
        if not self.fewshot:
            return main
        icl = vt_example(rng, self.icl_noises, self.num_chains, self.num_hops, name_len=3, layout=self.layout)
        shot = icl.input + icl.answer_prefix + " " + icl.answer + "\n\n"  # RULER's spacing, double space included
        return Example(shot + main.input, main.outputs, main.answer_prefix, main.answer)


@register
class VariableTrackingZeroShot(VariableTracking):
    name = "vt_zeroshot"
    description = "variable tracking without RULER's one-shot example"
    fewshot = False


@register
class VariableTracking2024(VariableTracking):
    name = "vt_ruler2024"
    description = "vt in RULER's layout before May 2025 ('assgined', a space after each newline)"
    variant_of = "vt (RULER's wording before May 2025)"
    layout = "2024"
