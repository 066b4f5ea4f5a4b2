"""The command line as a new user meets it: help, --version, flag spellings, fast errors, quiet output."""

import argparse
import json
import subprocess
import sys
import textwrap
from importlib import metadata

import pytest

from hydrahead.cli import build_parser

from ..conftest import ROOT, TEACHER


def run(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def parsers(parser, path="hydrahead"):
    """Every (command path, parser) of the tree, the top level included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, f"{path} {name}")


def options(parser):
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)
            and a.dest != "version"]


def test_every_flag_has_help_its_default_and_both_spellings():
    checked = 0
    for path, parser in parsers(build_parser()):
        assert parser.description, f"`{path} --help` does not say what the command does"
        text = parser.format_help()
        for action in options(parser):
            first = action.option_strings[0]
            assert action.help, f"{path} {first} has no help text"
            name = first[2:]
            assert "-" not in name, f"{path} {first}: the first spelling should be the underscore one"
            if "_" in name:
                assert "--" + name.replace("_", "-") in action.option_strings, f"{path} {first} has no dash alias"
            default = action.default
            if default is not None and default is not False:
                shown = parser._get_formatter()._get_help_string(action) % {"default": default}
                assert str(default) in shown, f"{path} {first}: its default {default!r} is not in its help"
            checked += 1
        assert "default: None" not in text and "default: False" not in text, path
    assert checked > 100


def test_every_multi_word_flag_parses_in_both_spellings():
    parser = build_parser()
    a = parser.parse_args(["eval", "--model", "m", "--output-path", "r", "--batch-size", "2", "--kv-format", "fp8"])
    b = parser.parse_args(["eval", "--model", "m", "--output_path", "r", "--batch_size", "2", "--kv_format", "fp8"])
    assert vars(a) == vars(b)
    assert parser.parse_args(["generate", "--model", "m", "--max-new-tokens", "3"]).max_new_tokens == 3
    assert parser.parse_args(["teacher", "train", "--out", "o", "--no-eval"]).no_eval


def test_version_names_hydrahead_torch_and_transformers_without_importing_them():
    code = textwrap.dedent("""
        import sys
        from hydrahead_cli import main  # the command's entry point: hydrahead registers nothing yet
        try:
            main(["--version"])
        except SystemExit as e:
            assert e.code == 0, e.code
        print("imported:", sorted(m for m in ("torch", "transformers") if m in sys.modules))
    """)
    proc = run("-c", code)
    assert proc.returncode == 0, proc.stderr
    import hydrahead

    line = proc.stdout.splitlines()[0]
    assert line.startswith(f"hydrahead {hydrahead.__version__} (")
    assert f"torch {metadata.version('torch')}" in line and f"transformers {metadata.version('transformers')}" in line
    assert proc.stdout.splitlines()[1] == "imported: []"


# (arguments, the one-line error); every one must come back before torch or transformers is imported
BAD = [
    (["eval", "--model", "TEACHER", "--tasks", "niah_nope"], "unknown task 'niah_nope'"),
    (["eval", "--model", "TEACHER", "--tasks", "vt", "--lengths", "512,abc"], "lengths must be integers"),
    (["eval", "--model", "TEACHER", "--tasks", "vt", "--lengths", "0"], "lengths must be positive"),
    (["eval", "--model", "missing-dir", "--tasks", "vt"], "model directory missing-dir does not exist"),
    (["eval", "--model", "TEACHER", "--tasks", "vt", "--lengths", "512,256"], "length 256 is too short for task 'vt'"),
    (["eval", "--model", "TEACHER", "--tasks", "vt", "--batch_size", "0"], "--batch_size must be positive"),
    (["eval", "--model", "TEACHER", "--tasks", "vt", "--limit", "-1"], "--limit must be positive"),
    (["eval", "--model", "TEACHER", "--tasks", "vt", "--depths", "50,120"], "--depths must be percentages in [0, 100]"),
    (["eval", "--model", "TEACHER", "--tasks", "vt", "--kv-window", "8"], "--kv_window needs --kv_format"),
    (["eval", "--model", "TEACHER", "--tasks", "vt", "--budget", "8"], "--budget only applies with --sparse_decode"),
    (["eval", "--model", "TEACHER"], "give --tasks"),
    (["generate", "--model", "TEACHER"], "give exactly one of --prompt"),
    (["generate", "--model", "TEACHER", "--prompt_file", "nope.txt"], "prompt file nope.txt does not exist"),
    (["convert", "--model", "TEACHER", "--plan", "nope.json", "--out", "x"], "plan file nope.json does not exist"),
    (["plan", "--scores", "nope.json", "--out", "x"], "--scores nope.json does not exist"),
    (["plan", "--model", "TEACHER", "--ratio", "7", "--out", "x"], "--ratio takes GDN:FA units"),
    (["ablate", "--model", "TEACHER", "--scores", "nope.json", "--ks", "0,2"], "--ks takes comma-separated numbers"),
    (["score", "--model", "TEACHER", "--num_pairs", "0", "--out", "x"], "--num_pairs must be positive"),
    (["distill", "--stage", "align", "--plan", "p.json", "--batch_size", "6", "--micro_batch", "4"],
     "batch_size 6 is not a multiple of micro_batch 4"),
    (["distill", "--stage", "align", "--plan", "p.json", "--teacher", "missing-dir"], "missing-dir does not exist"),
    (["pipeline", "--teacher", "TEACHER", "--ratio", "seven"], "--ratio takes GDN:FA units"),
    (["pipeline", "--teacher", "TEACHER", "--head_weight", "-1"], "--head_weight must be at least 0"),
    (["teacher", "train", "--out", "x", "--steps", "0"], "--steps must be positive"),
    (["tasks", "generate", "--tokenizer", "TEACHER", "--task", "nope", "--length", "512", "--out", "x"],
     "unknown task 'nope'"),
    (["tasks", "generate", "--tokenizer", "TEACHER", "--task", "niah_multivalue", "--length", "100", "--out", "x"],
     "length 100 is too short for task 'niah_multivalue'"),
    (["roles", "--model", "TEACHER", "--target", "2", "--out", "x"], "--target must be a share in [0, 1]"),
    (["roles", "--model", "TEACHER", "--budget", "0", "--out", "x"], "budget"),
]


def test_bad_arguments_are_reported_before_torch_or_transformers_is_imported(tmp_path):
    cases = [([str(TEACHER) if a == "TEACHER" else a for a in args], message) for args, message in BAD]
    code = textwrap.dedent("""
        import contextlib, io, json, sys
        from hydrahead_cli import main  # the command's entry point: hydrahead registers nothing yet
        out = []
        for args, _ in json.loads(sys.argv[1]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(args)
            heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
            out.append([code, err.getvalue(), heavy])
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for (args, message), (code, err, heavy) in zip(cases, json.loads(proc.stdout)):
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("hydrahead: error:"), (args, err)
        assert message in lines[0], (args, lines[0])
        assert heavy == [], f"{args} imported {heavy} before reporting: {lines[0]}"


def test_the_early_token_count_is_the_models_tokenizer():
    """The length check before torch counts with `tokenizers` alone; it must count what transformers counts."""
    from transformers import AutoTokenizer

    from hydrahead.cli_checks import _FastTokenizer
    from hydrahead.tasks import generate

    reference = AutoTokenizer.from_pretrained(TEACHER)
    fast = _FastTokenizer(TEACHER / "tokenizer.json")
    for sample in generate("vt", reference, 512, 2) + generate("niah_multikey_1", reference, 512, 2):
        text = sample.input + sample.answer_prefix
        assert fast(text)["input_ids"] == reference(text, add_special_tokens=False)["input_ids"]


def test_good_arguments_pass_the_checks_without_torch():
    code = textwrap.dedent(f"""
        import sys
        import hydrahead_cli  # the command's entry point: hydrahead registers nothing yet
        from hydrahead.cli import build_parser
        args = build_parser().parse_args(["eval", "--model", {str(TEACHER)!r}, "--tasks", "niah_single_1,vt",
                                          "--lengths", "512,1024", "--depths", "0,50,100", "--kv_format", "fp8"])
        args.check(args)
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
    """)
    proc = run("-c", code)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_third_party_deprecations_and_bars_are_silenced_only_inside_a_command():
    import warnings

    from transformers.utils import logging as hf_logging

    from hydrahead.quiet import third_party_quiet

    records = []
    handler = hf_logging.get_logger("transformers").handlers[0]
    emit = handler.emit
    handler.emit = records.append
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with third_party_quiet():
                warnings.warn("`past_key_values` is deprecated", FutureWarning)
                warnings.warn("a real problem", UserWarning)
                hf_logging.get_logger("transformers.utils.generic").warning("`cache_params` are deprecated.")
                hf_logging.get_logger("transformers.modeling_utils").warning("some weights were not used")
                assert not hf_logging.is_progress_bar_enabled()
            assert [str(w.message) for w in seen] == ["a real problem"]
            warnings.warn("`past_key_values` is deprecated", FutureWarning)  # the library's caller still sees it
            assert len(seen) == 2
        assert [r.getMessage() for r in records] == ["some weights were not used"]
        assert hf_logging.is_progress_bar_enabled()
    finally:
        handler.emit = emit


@pytest.mark.parametrize("command", ["eval", "convert"])
def test_a_cli_run_shows_no_third_party_deprecations_or_load_bars(tmp_path, command):
    """On transformers 5.24 these runs printed a `past_key_values` FutureWarning, the same as a log line,
    and the "Loading weights" / "Writing model shards" bars."""
    if command == "eval":
        args = ["eval", "--model", str(TEACHER), "--tasks", "niah_single_1", "--lengths", "512", "--limit", "1", "--quiet"]
    else:
        args = ["convert", "--model", str(TEACHER), "--plan", str(ROOT / "examples/plans/teacher_7to1_query.json"),
                "--out", str(tmp_path / "hybrid")]
    proc = run("-m", "hydrahead.cli", *args)
    assert proc.returncode == 0, proc.stderr
    noise = [line for line in proc.stderr.splitlines()
             if "deprecat" in line.lower() or "Loading weights" in line or "Writing model shards" in line]
    assert noise == []


def test_a_benchmark_run_shows_no_load_bars_either():
    """The training studies' logs were thousands of "Loading weights" bars; every script runs under the quiet."""
    loud = [p.name for p in sorted((ROOT / "benchmarks").glob("*.py"))
            if "def main(" in p.read_text() and "run_quietly(main)" not in p.read_text()]
    assert loud == []
    proc = run("benchmarks/multivalue_repeats.py", "--models", str(TEACHER), "--limit", "1", "--pairs", "1")
    assert proc.returncode == 0, proc.stderr
    assert "| values said |" in proc.stdout and "Loading weights" not in proc.stderr + proc.stdout


def test_the_behaviours_named_in_help_are_the_registered_ones_and_the_pipeline_takes_them(monkeypatch):
    import hydrahead.transfer.pipeline as pipeline
    from hydrahead.cli import BEHAVIOUR_HELP, main
    from hydrahead.selection import BEHAVIOURS

    assert BEHAVIOUR_HELP.split(", ") == list(BEHAVIOURS)
    seen = {}
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg, results, progress: seen.setdefault("cfg", cfg))
    monkeypatch.setattr("hydrahead.cli_checks.model_dir", lambda *a: None)
    assert main(["pipeline", "--behaviours", "retrieval, no_repeat", "--quick", "--quiet"]) == 0
    assert seen["cfg"].behaviours == ["retrieval", "no_repeat"] and seen["cfg"].align_steps == 20
    seen.clear()
    assert main(["pipeline", "--quiet"]) == 0
    assert seen["cfg"].behaviours == ["retrieval", "multikey", "induction", "no_repeat"]
