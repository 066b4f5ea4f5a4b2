"""The shipped teacher through `hydrahead convert`, `eval` and `generate` as a user runs them."""

import json

import torch

from hydrahead.cli import main

from ..conftest import ROOT, TEACHER

PLAN = ROOT / "examples" / "plans" / "teacher_7to1_query.json"


def test_teacher_all_fa_conversion_is_exact():
    from transformers import AutoModelForCausalLM

    from hydrahead.attention import HybridOptions
    from hydrahead.convert import convert
    from hydrahead.plan import HeadPlan

    model = AutoModelForCausalLM.from_pretrained(TEACHER, local_files_only=True).eval()
    ids = torch.randint(3, model.config.vocab_size, (2, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
        hybrid = convert(model, HeadPlan.full_attention(model.config), HybridOptions(fusion="concat", fa_position="rope"))
        assert (hybrid(ids).logits - expected).abs().max().item() < 1e-5


def test_convert_then_eval_and_generate_the_hybrid(tmp_path, capsys):
    out = tmp_path / "hybrid"
    assert main(["convert", "--model", str(TEACHER), "--plan", str(PLAN), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 FA / 28 GDN query heads (GDN:FA 7:1)" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["HydraQwen3ForCausalLM"] and config["hydrahead"]["options"]["fusion"] == "scale"
    assert (out / "plan.json").is_file() and (out / "tokenizer.json").is_file()

    # the evaluation harness takes the hybrid directory as it takes any model directory
    code = main(["eval", "--model", str(out), "--tasks", "niah_single_1", "--lengths", "512", "--limit", "2",
                 "--output_path", str(tmp_path / "results"), "--quiet"])
    assert code == 0
    metrics = json.loads(next((tmp_path / "results").glob("*/metrics.json")).read_text())
    assert 0 <= metrics["results"]["niah_single_1"]["512"] <= 100

    assert main(["generate", "--model", str(out), "--prompt", "The grass is green.", "--max_new_tokens", "5"]) == 0
    err = capsys.readouterr().err
    assert "hybrid model:" in err and "5 new tokens" in err


def test_convert_rejects_a_plan_for_another_shape(tmp_path, capsys):
    plan = json.loads(PLAN.read_text())
    plan["model"]["num_heads"] = 16
    plan["fa_heads"] = [[1], [3], [5], [15]]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    code = main(["convert", "--model", str(TEACHER), "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "x")])
    assert code == 2
    assert "the plan is for a model with 4 layers x 16 query heads" in capsys.readouterr().err
