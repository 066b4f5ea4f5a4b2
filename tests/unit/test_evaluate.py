import json

import pytest
import torch

from hydrahead.compat import CACHE_KWARG
from hydrahead.errors import HydraheadError
from hydrahead.evaluation import EvalResult, build_samples, evaluate, score_samples, write_results
from hydrahead.generation import greedy_generate
from hydrahead.models import ModelError, load_causal_lm
from tests.conftest import cli_in_process


def test_batched_greedy_generation_matches_one_by_one(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir)
    with torch.no_grad():  # a sharper random model, so that greedy choices are not near-ties
        for p in model.parameters():
            p.mul_(8.0)
    prompts = ["The grass is green. The sky", "One of the special magic numbers for x-y is: 12", "VAR A = 1"]
    batched, n_prefill, _ = greedy_generate(model, tok, prompts, 8)
    single = [greedy_generate(model, tok, [p], 8)[0][0] for p in prompts]
    assert batched == single
    assert n_prefill == sum(len(tok(p)["input_ids"]) for p in prompts)


def test_the_prefill_computes_the_last_logits_only_and_generates_the_same(tiny_model_dir):
    """The prefill asks for one position's logits (no [B, T, vocab] tensor at long lengths); the completions are
    those of a model that computes them all."""
    model, tok = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    widths = []
    model.register_forward_hook(lambda module, args, out: widths.append(out.logits.shape[1]))
    prompts = ["The grass is green. The sky", "One of the special magic numbers for x-y is: 12"]
    texts, _, _ = greedy_generate(model, tok, prompts, 6)
    assert widths[0] == 1 and len(widths) > 1

    class EveryLogit(torch.nn.Module):  # a forward without logits_to_keep: the prefill asks for nothing more
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids, use_cache, **cache):
            assert set(cache) <= {CACHE_KWARG}  # the cache, under the installed release's name, and nothing else
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=use_cache, **cache)

    widths.clear()
    assert greedy_generate(EveryLogit(model), tok, prompts, 6)[0] == texts
    assert widths[0] == max(len(tok(p)["input_ids"]) for p in prompts)


def test_scores_aggregate_per_task_length_and_depth(tokenizer, monkeypatch):
    samples = build_samples(tokenizer, "niah_single_1", [512], limit=4, seed=0, depths=[0, 100])
    # an oracle that answers right at depth 0 and wrong at depth 100
    def oracle(model, tok, prompts, n, cache_factory=None):
        by_prompt = {s.prompt(): s for s in samples}
        return [(" " + by_prompt[p].outputs[0]) if by_prompt[p].depth == 0 else " 0000000" for p in prompts], 10, 0.01

    monkeypatch.setattr("hydrahead.evaluation.greedy_generate", oracle)
    result = score_samples(None, tokenizer, samples, batch_size=3, progress=False)
    assert result.scores == {"niah_single_1": {512: 50.0}}
    assert result.depth_scores == {"niah_single_1": {512: {0.0: 100.0, 100.0: 0.0}}}
    assert len(result.records) == 4 and {r["score"] for r in result.records} == {0.0, 1.0}


def test_evaluate_writes_a_new_complete_results_folder_each_run(tiny_model_dir, tmp_path):
    model, tok = load_causal_lm(tiny_model_dir)
    result = evaluate(model, tok, tasks="niah_single_1,passkey", lengths=[256], limit=2, depths=[0, 100], progress=False)
    assert set(result.scores) == {"niah_single_1", "passkey"}
    assert result.table().splitlines()[0] == "| Task | 256 |"
    first = write_results(result, tmp_path, "tiny", plot=True)
    second = write_results(result, tmp_path, "tiny", plot=False)
    assert first != second and first.exists() and second.exists()
    assert {p.name for p in first.iterdir()} >= {"metrics.json", "samples.jsonl", "config.json", "accuracy_vs_length.png",
                                                 "depth_heatmap_niah_single_1.png"}
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["results"]["passkey"]["256"] == result.scores["passkey"][256]
    lines = (first / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 4 and {"input", "prediction", "references", "score"} <= set(json.loads(lines[0]))
    assert not list(tmp_path.glob("*.partial"))


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    result = EvalResult({"t": {1: 1.0}}, {}, {}, [], {})
    monkeypatch.setattr("hydrahead.plots.plot_results", lambda *a: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        write_results(result, tmp_path, "x", plot=True)
    assert list(tmp_path.iterdir()) == []


def test_missing_and_wrong_model_directories_are_named(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_causal_lm(tmp_path / "nope")
    with pytest.raises(ModelError, match="no config.json"):
        load_causal_lm(tmp_path)
    from transformers import ViTConfig

    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="is not a causal LM"):
        load_causal_lm(tmp_path)


def test_bad_arguments(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir)
    with pytest.raises(HydraheadError, match="limit must be positive"):
        evaluate(model, tok, "niah_single_1", [512], limit=0)
    with pytest.raises(HydraheadError, match="lengths must be"):
        evaluate(model, tok, "niah_single_1", "512,abc", limit=1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "niah_nope"], "unknown task 'niah_nope'"),
        (["--tasks", "vt", "--lengths", "128"], "length 128 is too short for task 'vt'"),
        (["--data", "DATA"], "missing 'outputs'"),
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(tiny_model_dir, tmp_path, args, message):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"input": "hello"}\n')
    out = tmp_path / "results"
    args = [str(data) if a == "DATA" else a for a in args]
    proc = cli_in_process("eval", "--model", str(tiny_model_dir), "--output_path", str(out), "--quiet", *args)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hydrahead: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_cli_missing_model(tmp_path):
    proc = cli_in_process("eval", "--model", str(tmp_path / "missing"), "--tasks", "vt")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_cli_runs_a_ruler_file(tiny_model_dir, tmp_path):
    data = tmp_path / "ruler.jsonl"
    data.write_text(json.dumps({"index": 0, "input": "The pass key is 12345. What is the pass key?", "outputs": ["12345"],
                                "length": 20, "answer_prefix": " The pass key is"}) + "\n")
    proc = cli_in_process("eval", "--model", str(tiny_model_dir), "--data", str(data), "--output_path",
                          str(tmp_path / "r"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "| ruler |" in proc.stdout
    assert "| Task | 32 |" in proc.stdout  # one sample of 20 tokens: one column, rounded to a standard length
    (folder,) = (tmp_path / "r").iterdir()
    assert json.loads((folder / "samples.jsonl").read_text())["references"] == ["12345"]


def test_python_api_is_the_function():
    import hydrahead
    import hydrahead.evaluation

    assert hydrahead.evaluate is hydrahead.evaluation.evaluate


def test_cli_writes_a_ruler_file_that_reads_back(tiny_model_dir, tmp_path):
    from hydrahead.tasks import read_jsonl

    out = tmp_path / "vt.jsonl"
    proc = cli_in_process("tasks", "generate", "--tokenizer", str(tiny_model_dir), "--task", "vt", "--length", "1024",
                          "--num_samples", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    samples = read_jsonl(out)
    assert len(samples) == 3 and all(s.length <= 1024 and len(s.outputs) == 5 for s in samples)


def test_cli_names_a_directory_that_is_not_a_causal_lm(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    proc = cli_in_process("eval", "--model", str(tmp_path), "--tasks", "vt")
    assert proc.returncode == 2 and "is not a causal LM (model_type 'vit')" in proc.stderr


def test_a_ruler_file_gets_rulers_budget_and_one_score_beside_its_lengths(tmp_path, tokenizer, monkeypatch):
    from hydrahead.tasks import read_jsonl

    # as RULER writes it: <task>/validation.jsonl, each sample with its own token count
    path = tmp_path / "niah_single_1" / "validation.jsonl"
    path.parent.mkdir()
    lengths = [3900, 3950, 4000, 7900, 8000, 8100]
    path.write_text("".join(json.dumps({"index": i, "input": f"Q{i}?", "outputs": [str(i)], "length": n}) + "\n"
                            for i, n in enumerate(lengths)))
    budgets = []

    def answers_the_short_ones(model, tok, prompts, n, cache_factory=None):
        budgets.append(n)
        return [p[1] if int(p[1]) < 3 else "no" for p in prompts], 10, 0.01

    monkeypatch.setattr("hydrahead.evaluation.greedy_generate", answers_the_short_ones)
    result = score_samples(None, tokenizer, read_jsonl(path), progress=False)
    assert set(budgets) == {128}  # RULER's NIAH budget, where ours is 32
    assert result.scores == {"niah_single_1": {4096: 100.0, 8192: 0.0}}  # not six columns of one sample each
    assert result.overall == {"niah_single_1": 50.0}
    assert result.table().splitlines()[0] == "| Task | 4096 | 8192 |"  # generated runs: the columns asked for
    result.overall_column = True  # as `eval --data` sets it
    assert result.table().splitlines()[:3] == ["| Task | 4096 | 8192 | all |", "|---|---:|---:|---:|",
                                               "| niah_single_1 | 100.0 | 0.0 | 50.0 |"]
    assert result.to_json()["overall"] == {"niah_single_1": 50.0}


def test_batch_size_must_be_positive(tokenizer):
    samples = build_samples(tokenizer, "passkey", [256], limit=1, seed=0)
    with pytest.raises(HydraheadError, match="--batch_size must be at least 1, got 0"):
        score_samples(None, tokenizer, samples, batch_size=0, progress=False)


def test_eval_of_a_ruler_folder_prints_one_score_per_file(tiny_model_dir, tmp_path, capsys):
    from hydrahead.cli import main

    path = tmp_path / "vt" / "validation.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"index": i, "input": "VAR A = 1. Which variables are 1?", "outputs": ["A"],
                                        "length": n}) + "\n" for i, n in enumerate([200, 220, 400, 450])))
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| Task | 256 | 512 | all |" in out and "| vt |" in out  # the task from the folder, not "validation"
