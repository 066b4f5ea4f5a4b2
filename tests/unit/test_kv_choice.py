"""`hydrahead plan --kv_budget --kv_formats`: FA heads, per-head formats and decode roles chosen together."""

import json

import numpy as np
import pytest
import torch

from hydrahead.cli import main
from hydrahead.models import load_causal_lm
from hydrahead.plan import HeadPlan, ModelShape
from hydrahead.selection import BehaviourScores, Scores, SelectionError, make_plan
from hydrahead.selection.kv_choice import FormatErrors, head_cost, measure_format_errors, plan_under_budget

SHAPE = ModelShape(num_layers=4, num_heads=8, num_kv_heads=2, head_dim=32)
SPECS = ["bf16", "fp8", "int4", "tq4:int4"]


def kv_scores(shape: ModelShape) -> Scores:
    """Scores whose KV-level ranking is known: (layer, kv) scores higher the lower its index l * KV + kv."""
    per_kv = -np.arange(shape.num_layers * shape.num_kv_heads, dtype=float).reshape(shape.num_layers, -1) + 100
    per_head = np.repeat(per_kv, shape.group_size, axis=1)
    zeros = np.zeros_like(per_head)
    return Scores("m", shape, {}, {"retrieval": BehaviourScores(1.0, -1.0, per_head, per_kv, zeros, [(0, 0)])})


def synthetic_errors(outlier=(0, 0)) -> FormatErrors:
    errors = np.tile(np.array([0.0, 0.001, 0.01, 0.012]), (SHAPE.num_layers, SHAPE.num_kv_heads, 1))
    errors[outlier][2:] = 0.5  # a head whose keys no 4-bit format serves
    return FormatErrors(SPECS, errors)


def test_costs_are_the_exact_bytes_per_token_of_one_head():
    assert head_cost("bf16", 32) == 128 and head_cost("fp8", 32) == 64 + 8 / 64
    assert head_cost("tq4:int4", 32) == 16 + 2 + 16 + 4


def test_formats_stretch_the_budget_over_more_heads_and_spare_the_sensitive_one():
    scores, errors = kv_scores(SHAPE), synthetic_errors()
    budget = 4 * 128  # four KV heads in bf16
    plan = plan_under_budget(SHAPE, scores, errors, budget, "kv", max_error=0.02, roles_target=0.25,
                             decode={"budget": 64})
    bf16_only = make_plan(SHAPE, "interp", None, "kv", kv_budget=budget, scores=scores)
    assert plan.kv_bytes_per_token() <= budget
    assert plan.num_cached_kv == 8 > bf16_only.num_cached_kv == 4  # every KV head, most in 4 bits
    formats = {(layer, h): plan.kv_formats[layer][h] for layer in range(4) for h in plan.fa_kv_heads(layer)}
    assert formats[(0, 0)] in ("bf16:bf16", "fp8:fp8")  # 4 bits lose half of this head: a precise format
    assert sum(f.startswith(("int4", "tq4")) for f in formats.values()) >= 5
    assert plan.decode_roles[0] == ["retrieval"] * 2 and plan.num_retrieval == 2 + 2  # layer 0, then the best 25%
    assert plan.decode_roles[1] == ["retrieval", "retrieval"] and plan.decode == {"budget": 64}
    assert plan.meta["strategy"] == "kv_budget"


def test_a_tight_budget_keeps_the_best_heads_and_bad_budgets_are_refused():
    scores, errors = kv_scores(SHAPE), synthetic_errors(outlier=(3, 1))
    plan = plan_under_budget(SHAPE, scores, errors, 100, "query", max_error=0.02)
    assert plan.fa_heads[0] == [0, 1, 2, 3, 4, 5, 6, 7] and plan.num_fa == 8  # both KV heads of layer 0 in 4 bits
    assert plan.kv_bytes_per_token() <= 100
    with pytest.raises(SelectionError, match="smaller than one KV head in the cheapest format"):
        plan_under_budget(SHAPE, scores, errors, 10)


def test_errors_are_measured_on_the_models_own_keys_and_values(tiny_model_dir):
    model, tok = load_causal_lm(tiny_model_dir)
    errors = measure_format_errors(model, tok, ["bf16", "fp8", "tq4"], samples=2, length=200)
    assert errors.errors.shape == (2, 2, 3)
    mean = errors.errors.mean(axis=(0, 1))
    assert 0 < mean[0] < mean[1] < mean[2] < 0.05  # bf16 rounds float32 keys a little; fp8 more; 4 bits most


def test_cli_plan_under_a_kv_budget(tiny_model_dir, tmp_path, capsys):
    torch.manual_seed(0)
    shape = ModelShape(2, 4, 2, 8)
    kv_scores(shape).save(tmp_path / "scores.json")
    out = tmp_path / "plan.json"
    args = ["plan", "--scores", str(tmp_path / "scores.json"), "--model", str(tiny_model_dir), "--kv_budget", "40",
            "--kv_formats", "bf16,fp8,tq4", "--decode_budget", "64", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "format error per KV head" in printed and "original 128 B/token (bfloat16" in printed
    plan = HeadPlan.load(out)
    assert plan.kv_bytes_per_token() <= 40 and plan.decode == {"budget": 64} and plan.decode_roles is not None
    assert json.loads(out.read_text())["format"] == "hydrahead.plan/2"
    assert main(args[:-2] + ["--ratio", "3:1", "--out", str(out)]) == 2
    assert "no --ratio" in capsys.readouterr().err
    assert main(["plan", "--scores", str(tmp_path / "scores.json"), "--kv_formats", "fp8", "--out", str(out)]) == 2
    assert "give all three" in capsys.readouterr().err
