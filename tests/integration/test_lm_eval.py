"""An outside client runs a hybrid: lm-evaluation-harness's own CLI (`lm_eval --model hf`, trust_remote_code) on a
converted directory and the example task in examples/lm_eval (a local JSONL that hydrahead generates; nothing is
downloaded). The hybrid is the shipped teacher with every head FA, numerically the teacher, so its score is real
(~100 on niah_single_1 at 512) and must be hydrahead's own, prediction for prediction."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT, TEACHER

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate", reason="lm_eval's `hf` model imports accelerate (the `lm_eval[hf]` extra)")

EXAMPLE = ROOT / "examples" / "lm_eval"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hydrahead.attention import HybridOptions
    from hydrahead.convert import convert, save
    from hydrahead.plan import HeadPlan

    teacher = AutoModelForCausalLM.from_pretrained(TEACHER, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(TEACHER, local_files_only=True)
    hybrid = convert(teacher, HeadPlan.full_attention(teacher.config), HybridOptions(fusion="concat", fa_position="rope"))
    path = save(hybrid, tmp_path_factory.mktemp("lm_eval") / "hybrid", tokenizer)
    return path, hybrid.eval(), tokenizer, teacher.num_parameters()


def test_lm_eval_cli_scores_a_converted_hybrid_as_hydrahead_does(converted, tmp_path):
    import hydrahead
    from hydrahead.cli import main
    from hydrahead.evaluation import score_samples
    from hydrahead.tasks import read_jsonl

    model_dir, hybrid, tokenizer, teacher_parameters = converted
    # the README's commands: the data file sits where lm_eval runs, under the name the shipped YAML reads
    data = tmp_path / "hydrahead_niah.jsonl"
    assert main(["tasks", "generate", "--tokenizer", str(TEACHER), "--task", "niah_single_1", "--length", "512",
                 "--num_samples", "8", "--out", str(data)]) == 0

    lm_eval_cli = Path(sys.executable).with_name("lm_eval")
    command = [str(lm_eval_cli)] if lm_eval_cli.is_file() else [sys.executable, "-m", "lm_eval"]
    src = str(Path(hydrahead.__file__).resolve().parents[1])  # the subprocess uses the hydrahead under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run(
        [*command, "--model", "hf", "--model_args", f"pretrained={model_dir},trust_remote_code=True,dtype=float32",
         "--device", "cpu", "--batch_size", "1", "--include_path", str(EXAMPLE), "--tasks", "hydrahead_niah",
         "--output_path", str(tmp_path / "results"), "--log_samples"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "|hydrahead_niah|" in run.stdout, run.stdout[-2000:]

    results = json.loads(next((tmp_path / "results").glob("*/results_*.json")).read_text())
    score = results["results"]["hydrahead_niah"]["string_match_all,none"]
    assert results["n-samples"]["hydrahead_niah"]["effective"] == 8
    assert score >= 75, score
    # lm-eval does not log the model class; the parameter count it reports is the hybrid's (its fused projections
    # carry gates the teacher's Qwen3 has not), and without hydrahead no class could load `hydrahead_qwen3` at all
    assert results["config"]["model_num_parameters"] == hybrid.num_parameters() != teacher_parameters

    # hydrahead's own evaluation of the same file: the same prompt (input + answer prefix, no special tokens, no chat
    # template), greedy, stopping at EOS, so the same predictions and the same score. (lm-eval asks generate() for
    # max_length = prompt + 32 tokens, but the teacher's generation_config sets max_new_tokens=64, which transformers
    # prefers; the teacher ends its answer with EOS long before either limit, so this does not show here.)
    ours = score_samples(hybrid, tokenizer, read_jsonl(data), batch_size=1, progress=False)
    lines = [json.loads(line) for line in next((tmp_path / "results").glob("*/samples_hydrahead_niah_*.jsonl")).open()]
    theirs = {line["doc"]["index"]: line["filtered_resps"][0] for line in lines}
    assert theirs == {r["index"]: r["prediction"] for r in ours.records}
    assert score == pytest.approx(ours.scores["niah_single_1"][512], abs=0.01)
