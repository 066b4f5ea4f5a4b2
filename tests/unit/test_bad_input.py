"""Bad input found before any work: one line `hydrahead: error: ...` and exit code 2, never a traceback,
nothing written; and the one warning (a prompt longer than the model's positions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hydrahead import models
from hydrahead.cli import main


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a command gets as far as loading the model: the error must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was found")

    monkeypatch.setattr(models, "load_model", refuse)


def one_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hydrahead: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0].removeprefix("hydrahead: error: ")


def write(path, text: str | bytes):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"input": "caf\xe9", "outputs": ["x"]}', "d.jsonl:1: not UTF-8 text (byte 0xe9 at column 15)"),
        (b'{"input": 12345, "outputs": ["x"]}', "d.jsonl:1: 'input' must be a string, got 12345"),
        (b'{"index": "abc", "input": "x", "outputs": ["x"]}', "d.jsonl:1: 'index' must be an integer, got 'abc'"),
    ],
)
def test_eval_names_a_bad_data_line(tiny_model_dir, tmp_path, capsys, no_model, line, message):
    data = write(tmp_path / "d.jsonl", line + b"\n")
    assert message in one_error(capsys, ["eval", "--model", str(tiny_model_dir), "--data", data, "--quiet"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "passkey", "--depths", "abc"], "--depths must be percentages in [0, 100], e.g. 0,50,100; got 'abc'"),
        (["--tasks", "passkey", "--depths", "0,150"], "--depths must be percentages in [0, 100]"),
        (["--tasks", "passkey", "--batch_size", "0"], "--batch_size must be positive, got 0"),
        (["--tasks", "passkey", "--batch_size", "-3"], "--batch_size must be positive, got -3"),
        (["--data", "DATA", "--tasks", "vt"], "--data takes its tasks, lengths and depths from the file; --tasks would be ignored"),
        (["--data", "DATA", "--depths", "0,50", "--lengths", "1024"], "--lengths, --depths would be ignored: drop them"),
        (["--tasks", "passkey", "--output_path", "FILE"], "--output_path FILE is a file, not a folder"),
        (["--tasks", "passkey", "--output_path", "FILE/results"], "--output_path FILE/results is under FILE, a file"),
    ],
)
def test_eval_flags_are_checked_before_the_model_loads(tiny_model_dir, tmp_path, capsys, no_model, args, message):
    data = write(tmp_path / "d.jsonl", '{"input": "x", "outputs": ["y"]}\n')
    file = write(tmp_path / "a_file", "not a folder")
    args = [data if a == "DATA" else a.replace("FILE", file) for a in args]
    error = one_error(capsys, ["eval", "--model", str(tiny_model_dir), "--quiet", *args])
    assert message.replace("FILE", file) in error


def test_an_unwritable_output_path_is_found_before_the_run(tiny_model_dir, tmp_path, capsys, no_model):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        probe = locked / "probe"
        try:  # root may write anyway: then there is nothing to test here
            probe.mkdir()
            probe.rmdir()
            pytest.skip("running as a user who can write into a read-only folder")
        except PermissionError:
            pass
        error = one_error(capsys, ["eval", "--model", str(tiny_model_dir), "--tasks", "passkey",
                                   "--output_path", str(locked / "results")])
        assert error == f"--output_path {locked / 'results'} cannot be written (Permission denied in {locked})"
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no one can make a folder")
def test_an_output_path_where_nothing_can_be_made_is_found_before_the_run(tiny_model_dir, capsys, no_model):
    error = one_error(capsys, ["eval", "--model", str(tiny_model_dir), "--tasks", "passkey",
                               "--output_path", "/proc/hydrahead/results"])
    assert error.startswith("--output_path /proc/hydrahead/results cannot be written (")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", ""], "the prompt is empty"),
        (["--prompt", " \n "], "the prompt is empty"),
        (["--prompt_file", "LATIN1"], "is not UTF-8 text (byte 0xe9 at offset 3)"),
        (["--prompt_file", "EMPTY"], "the prompt is empty (EMPTY)"),
    ],
)
def test_generate_refuses_an_empty_or_undecodable_prompt(tiny_model_dir, tmp_path, capsys, no_model, args, message):
    files = {"LATIN1": write(tmp_path / "latin1.txt", b"caf\xe9"), "EMPTY": write(tmp_path / "empty.txt", "")}
    args = [files.get(a, a) for a in args]
    assert message.replace("EMPTY", files["EMPTY"]) in one_error(capsys, ["generate", "--model", str(tiny_model_dir), *args])


def test_generate_warns_about_a_prompt_beyond_the_models_positions(tiny_model_dir, capsys):
    long = " ".join(["grass"] * 1200)  # the tiny model has 512 positions
    assert main(["generate", "--model", str(tiny_model_dir), "--prompt", long, "--max_new_tokens", "1"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hydrahead: warning:")]
    assert len(warnings) == 1 and "x the model's 512 positions (max_position_embeddings)" in warnings[0]
    assert main(["generate", "--model", str(tiny_model_dir), "--prompt", "grass", "--max_new_tokens", "1"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_file_outputs_that_are_folders_are_refused(tiny_model_dir, tmp_path, capsys, no_model):
    error = one_error(capsys, ["plan", "--model", str(tiny_model_dir), "--strategy", "layerwise", "--ratio", "1:1",
                               "--out", str(tmp_path)])
    assert error == f"--out {tmp_path} is a folder; give a file name, e.g. {tmp_path / 'plan.json'}"
    assert list(tmp_path.iterdir()) == []
    error = one_error(capsys, ["tasks", "generate", "--tokenizer", str(tiny_model_dir), "--task", "vt", "--length", "512",
                               "--out", str(tmp_path)])
    assert error == f"--out {tmp_path} is a folder; give a file name, e.g. {tmp_path / 'vt.jsonl'}"
    error = one_error(capsys, ["score", "--model", str(tiny_model_dir), "--out", str(tmp_path)])
    assert error.startswith(f"--out {tmp_path} is a folder")


def test_ablate_names_bad_head_counts(tiny_model_dir, tmp_path, capsys, no_model):
    error = one_error(capsys, ["ablate", "--model", str(tiny_model_dir), "--scores", "x.json", "--ks", "1,abc"])
    assert error == "--ks takes comma-separated numbers, got '1,abc'"


def test_a_truncated_scores_file_is_named_wherever_it_is_cut(tmp_path):
    from hydrahead.plan import ModelShape
    from hydrahead.selection import Scores, SelectionError
    from hydrahead.selection.scores import BehaviourScores

    zeros, kv = np.zeros((1, 4)), np.zeros((1, 2))
    path = Scores("m", ModelShape(1, 4, 2, 8), {}, {"retrieval": BehaviourScores(1.0, -1.0, zeros, kv, zeros, [(0, 0)])}
                  ).save(tmp_path / "scores.json")
    text = path.read_bytes()
    for cut in range(0, len(text), 5):
        path.write_bytes(text[:cut])
        with pytest.raises(SelectionError, match="not valid JSON|malformed|not a hydrahead scores file"):
            Scores.load(path)


def test_a_truncated_partial_sweep_is_named_before_the_model_loads(tiny_model_dir, tmp_path, capsys, no_model):
    partial = tmp_path / "scores.partial.json"
    partial.write_text('{"format": "hydrahead.scores.partial/1", "effects": {"retrieval": {"act')
    error = one_error(capsys, ["score", "--model", str(tiny_model_dir), "--out", str(tmp_path / "scores.json")])
    assert error.startswith(f"{partial}: not valid JSON") and error.endswith("delete it to start the sweep over")
    partial.write_bytes(json.dumps({"effects": {}}).encode()[:-1] + b"\xff}")
    assert "not UTF-8 text" in one_error(capsys, ["score", "--model", str(tiny_model_dir), "--out",
                                                  str(tmp_path / "scores.json")])
