import json

import pytest

from hydrahead.tasks import TaskError, generate, read_jsonl, string_match_all, string_match_part, write_jsonl
from hydrahead.tasks.scoring import postprocess_pred


def test_string_match_all_is_rulers_definition():
    preds = ["The numbers are 123 and 456.", "nothing here", "ABC abc"]
    refs = [["123", "456", "789"], ["1"], ["abc"]]
    # per sample: 2/3, 0, 1 -> mean * 100, rounded to 2 places
    assert string_match_all(preds, refs) == round((2 / 3 + 0 + 1) / 3 * 100, 2) == 55.56


def test_string_match_part_is_rulers_definition():
    preds = ["The numbers are 123 and 456.", "nothing here", "XyZ"]
    refs = [["999", "456"], ["1", "2"], ["xyz"]]
    assert string_match_part(preds, refs) == round(2 / 3 * 100, 2) == 66.67


def test_matching_is_case_insensitive_substring():
    assert string_match_all(["KSZBB mpwon"], [["kszbb", "MPWON"]]) == 100.0
    assert string_match_all(["1234567"], [["123456"]]) == 100.0  # a substring counts, as in RULER
    assert string_match_all(["12345"], [["123456"]]) == 0.0


def test_postprocess_replaces_control_characters():
    assert postprocess_pred("  42\x00 is\tit\n ") == "42\n is\nit"


def test_ruler_jsonl_round_trip(tmp_path, tokenizer):
    samples = generate("niah_multivalue", tokenizer, 512, 4, seed=0)
    path = tmp_path / "niah.jsonl"
    write_jsonl(samples, path)
    back = read_jsonl(path)
    assert [s.to_json() for s in back] == [s.to_json() for s in samples]
    line = json.loads(path.read_text().splitlines()[0])
    assert {"index", "input", "outputs", "length", "answer_prefix"} <= set(line)


def test_reads_a_file_written_by_ruler(tmp_path):
    # RULER lines carry index/input/outputs/length, sometimes more, sometimes no answer_prefix
    path = tmp_path / "vt.jsonl"
    path.write_text(json.dumps({"index": 7, "input": "Q?", "outputs": ["A"], "length": 9, "length_w_model_temp": 20}) + "\n")
    (s,) = read_jsonl(path)
    assert (s.index, s.input, s.outputs, s.length, s.answer_prefix, s.task) == (7, "Q?", ["A"], 9, "", "vt")
    assert s.extra == {"length_w_model_temp": 20, "max_length": 16, "tokens_to_generate": 30}


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"input": "x"}', r"bad.jsonl:2: missing 'outputs'"),
        ('{"outputs": ["x"]}', r"bad.jsonl:2: missing 'input'"),
        ("{not json", r"bad.jsonl:2: not valid JSON"),
        ('{"input": "x", "outputs": []}', r"'outputs' must be a non-empty list"),
        ('{"input": 12345, "outputs": ["x"]}', r"bad.jsonl:2: 'input' must be a string, got 12345"),
        ('{"index": "abc", "input": "x", "outputs": ["x"]}', r"bad.jsonl:2: 'index' must be an integer, got 'abc'"),
        ('{"length": "long", "input": "x", "outputs": ["x"]}', r"'length' must be an integer, got 'long'"),
        ('{"answer_prefix": 3, "input": "x", "outputs": ["x"]}', r"'answer_prefix' must be a string"),
        ('{"tokens_to_generate": 0, "input": "x", "outputs": ["x"]}', r"'tokens_to_generate' must be a positive"),
        ('["x", "y"]', r"bad.jsonl:2: expected a JSON object, got list"),
    ],
)
def test_bad_lines_are_named(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"input": "ok", "outputs": ["1"]}\n' + line + "\n")
    with pytest.raises(TaskError, match=message):
        read_jsonl(path)


def test_a_line_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"input": "ok", "outputs": ["1"]}\n{"input": "caf\xe9", "outputs": ["1"]}\n')
    with pytest.raises(TaskError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9 at column 15\)"):
        read_jsonl(path)


def _ruler_line(index, length, task=None):
    line = {"index": index, "input": "The pass key is 12345. What is it?", "outputs": ["12345"], "length": length,
            "length_w_model_temp": length + 10, "answer_prefix": " It is"}
    return json.dumps({**line, "task": task} if task else line) + "\n"


def test_rulers_layout_gives_the_task_its_budget_and_one_length(tmp_path):
    # RULER writes <length>/data/<task>/validation.jsonl; each sample records its own token count
    path = tmp_path / "4096" / "data" / "niah_single_1" / "validation.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(_ruler_line(i, n) for i, n in enumerate([3890, 3911, 3967])))
    samples = read_jsonl(path)
    assert {s.task for s in samples} == {"niah_single_1"}
    assert {s.extra["max_length"] for s in samples} == {4096} and [s.length for s in samples] == [3890, 3911, 3967]
    assert {s.extra["tokens_to_generate"] for s in samples} == {128}  # RULER's NIAH budget, not our 32
    # outside that layout: the task from the folder, the length rounded up to a standard length
    other = tmp_path / "vt" / "test.jsonl"
    other.parent.mkdir()
    other.write_text(_ruler_line(0, 1000) + _ruler_line(1, 1900) + _ruler_line(2, 3000, task="qa_1"))
    a, b, c = read_jsonl(other)
    assert (a.task, a.extra["max_length"], a.extra["tokens_to_generate"]) == ("vt", 1024, 30)
    assert (b.extra["max_length"], c.task, c.extra["max_length"], c.extra["tokens_to_generate"]) == (2048, "qa_1", 4096, 32)
    # a file of our own keeps what it says
    mine = tmp_path / "validation.jsonl"
    mine.write_text(json.dumps({"input": "x", "outputs": ["y"], "length": 500, "max_length": 512,
                                "tokens_to_generate": 16, "task": "passkey"}) + "\n")
    (s,) = read_jsonl(mine)
    assert (s.task, s.extra["max_length"], s.extra["tokens_to_generate"]) == ("passkey", 512, 16)
