import random
import re
from collections import Counter

import pytest

from hydrahead.tasks import TASKS, TaskError, generate, get_task, mqar_batch
from hydrahead.tasks.words import NOISE, is_held_out, random_key, word_pool


def ntok(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _length_for(name):
    return 2048 if name == "cwe_fewshot" else 512


@pytest.mark.parametrize("name", sorted(TASKS))
def test_samples_fit_the_requested_length(tokenizer, name):
    # Stated tolerance: a sample never exceeds the length and falls short of it by at most 15% (one haystack
    # unit at 512 tokens is up to ~45 tokens for uuid lines); at 2048 by at most 5%.
    for length, tolerance in ((_length_for(name), 0.15), (2048, 0.05)):
        samples = generate(name, tokenizer, length, 3, seed=0)
        task = get_task(name)
        for s in samples:
            measured = ntok(tokenizer, s.input + s.answer_prefix) + task.tokens_to_generate
            assert measured == s.length
            assert (1 - tolerance) * length <= s.length <= length, (name, length, s.length)
            for ref in s.outputs:
                if name not in ("cwe", "cwe_fewshot", "fwe"):
                    assert ref in s.input


@pytest.mark.parametrize("name", ["niah_single_1", "niah_multikey_2", "vt", "fwe"])
def test_generation_is_deterministic_in_the_seed(tokenizer, name):
    a = generate(name, tokenizer, 512, 2, seed=3)
    b = generate(name, tokenizer, 512, 2, seed=3)
    c = generate(name, tokenizer, 512, 2, seed=4)
    assert [s.to_json() for s in a] == [s.to_json() for s in b]
    assert [s.input for s in a] != [s.input for s in c]


def test_lengths_are_in_tokens_of_the_given_tokenizer(tokenizer):
    class CharTokenizer:  # one token per character: the same length holds far less text
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text)))}

    bpe = generate("niah_single_1", tokenizer, 2048, 1)[0]
    chars = generate("niah_single_1", CharTokenizer(), 2048, 1)[0]
    assert len(chars.input) < len(bpe.input)
    assert 0.95 * 2048 <= len(chars.input + chars.answer_prefix) + 32 <= 2048


@pytest.mark.parametrize("name", ["niah_single_1", "niah_multikey_1", "niah_multikey_2", "niah_multivalue", "passkey"])
@pytest.mark.parametrize("depth", [0, 25, 50, 75, 100])
def test_needle_is_at_the_requested_depth(tokenizer, name, depth):
    sample = generate(name, tokenizer, 2048, 1, seed=1, depth=depth)[0]
    start, end = sample.extra["needle_span"]
    needle = sample.input[start:end]
    assert any(v in needle for v in sample.outputs)
    # the context runs from the end of the instructions to the question; measure in tokens
    lines = sample.input.split("\n")
    context_start = len(lines[0]) + 1
    context_end = sample.input.rindex("\n")
    before = ntok(tokenizer, sample.input[context_start:start])
    total = ntok(tokenizer, sample.input[context_start:context_end]) - ntok(tokenizer, needle)
    assert abs(before / total - depth / 100) <= 0.05, (before, total)


def test_ruler_wording_singular_and_plural(tokenizer):
    single = generate("niah_single_1", tokenizer, 512, 1)[0]
    assert single.input.startswith("A special magic number is hidden within the following text.")
    assert "What is the special magic number for" in single.input
    assert "One of the special magic numbers for" in single.input  # RULER keeps the needle plural
    assert single.answer_prefix.endswith("mentioned in the provided text is")
    multi = generate("niah_multivalue", tokenizer, 512, 1)[0]
    assert multi.input.startswith("Some special magic numbers are hidden")
    assert "What are all the special magic numbers for" in multi.input
    assert len(multi.outputs) == 4
    query = generate("niah_multiquery", tokenizer, 512, 1)[0]
    assert re.search(r"for [a-z]+-[a-z]+, [a-z]+-[a-z]+, [a-z]+-[a-z]+, and [a-z]+-[a-z]+ mentioned", query.input)
    uuids = generate("niah_multikey_3", tokenizer, 512, 1)[0]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuids.outputs[0])


def test_vt_outputs_follow_the_chain(tokenizer):
    for s in generate("vt", tokenizer, 1024, 3, seed=2):
        main = s.input[s.input.rindex("Memorize and track"):]
        value = re.search(r"assigned the value (\d+)", main).group(1)
        chain = [re.search(rf"VAR ([A-Z]+) = {value}", main).group(1)]
        while m := re.search(rf"VAR ([A-Z]+) = VAR {chain[-1]}\b", main):
            chain.append(m.group(1))
        assert chain == s.outputs
        assert "5 variables are assigned the value" in s.answer_prefix


def test_vt_follows_current_ruler_and_keeps_the_2024_layout_as_a_variant(tokenizer):
    # RULER since May 2025: "assigned", one noise block or assignment per line, no space after a newline
    s = generate("vt", tokenizer, 2048, 1, seed=0)[0]
    assert "assgined" not in s.input + s.answer_prefix and "\n " not in s.input
    main = s.input[s.input.rindex("Memorize and track"):]
    lines = main.split("\n\n", 1)[1].split("\nQuestion:")[0].split("\n")
    assert all(line == NOISE or re.fullmatch(r"VAR [A-Z]{5} = (\d{5}|VAR [A-Z]{5} )", line) for line in lines)
    assert sum(line.startswith("VAR") for line in lines) == 5
    old = generate("vt_ruler2024", tokenizer, 2048, 1, seed=0)[0]
    assert "5 variables are assgined the value" in old.answer_prefix and "\n The grass" in old.input


def test_cwe_and_fwe_answers_are_the_most_frequent_words(tokenizer):
    s = generate("cwe", tokenizer, 1024, 1)[0]
    entries = re.findall(r"\d+\. ([a-z]+)", s.input.split("\n")[1])
    top = [w for w, _ in Counter(entries).most_common(10)]
    assert sorted(top) == sorted(s.outputs)
    s = generate("fwe", tokenizer, 1024, 1)[0]
    counts = Counter(s.input.split("\n")[0].split(" coded words. ")[1].split())
    assert [w for w, _ in counts.most_common(4)][1:] == s.outputs and counts.most_common(1)[0][0] == "..."


@pytest.mark.parametrize("length", [512, 4096])
def test_fwe_uses_rulers_six_letter_words_and_small_vocabulary(tokenizer, length):
    s = generate("fwe", tokenizer, length, 1)[0]
    words = set(s.input.split("\n")[0].split(" coded words. ")[1].split()) - {"..."}
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in words)
    assert 3 <= len(words) <= max(10, length // 50) + 5  # RULER: max_seq_length // 50 words (was 2,000)


def test_bad_input_is_named(tokenizer):
    with pytest.raises(TaskError, match="unknown task 'niah_single_9'"):
        generate("niah_single_9", tokenizer, 512, 1)
    with pytest.raises(TaskError, match="too short for task 'niah_single_1'"):
        generate("niah_single_1", tokenizer, 64, 1)
    with pytest.raises(TaskError, match="does not take a needle depth"):
        generate("vt", tokenizer, 512, 1, depth=50)
    with pytest.raises(TaskError, match=r"depth must be a percentage"):
        generate("niah_single_1", tokenizer, 512, 1, depth=150)


def test_held_out_words_never_appear_in_training_keys():
    rng = random.Random(0)
    train = {random_key(rng, "train") for _ in range(2000)}
    assert not any(is_held_out(w) for key in train for w in key.split("-"))
    held = word_pool("nouns", "heldout")
    assert 0.08 < len(held) / len(word_pool("nouns")) < 0.17
    assert all(is_held_out(w) for key in {random_key(rng, "heldout") for _ in range(50)} for w in key.split("-"))


def test_mqar_labels_are_the_paired_values():
    inputs, labels = mqar_batch(16, 64, 8, vocab_size=256, seed=0)
    assert inputs.shape == labels.shape == (16, 64)
    for x, y in zip(inputs.tolist(), labels.tolist()):
        pairs = dict(zip(x[0:16:2], x[1:16:2]))
        asked = [(x[t], y[t]) for t in range(64) if y[t] != -100]
        assert len(asked) == 8 and all(pairs[k] == v for k, v in asked)
        assert all(k < 128 <= v for k, v in pairs.items())
    again, _ = mqar_batch(16, 64, 8, vocab_size=256, seed=0)
    assert (again == inputs).all()
    with pytest.raises(ValueError, match="cannot hold"):
        mqar_batch(1, 20, 8, vocab_size=256)
