"""Sparse decoding and learned decode roles on the shipped teacher."""

from hydrahead.cli import main
from hydrahead.decoding import sparse_decoding
from hydrahead.evaluation import evaluate
from hydrahead.models import load_causal_lm
from hydrahead.plan import HeadPlan

from ..conftest import TEACHER

R, S = "retrieval", "sparse"


def test_sparse_decoding_keeps_niah_near_dense():
    model, tokenizer = load_causal_lm(TEACHER)
    dense = evaluate(model, tokenizer, "niah_single_1", [512], limit=10, seed=0, progress=False)
    # layer 0 and layer 3, whose heads copy the digits (`hydrahead score` ranks them first)
    roles = [[R, R], [S, S], [S, S], [R, R]]
    with sparse_decoding(model, roles, budget=128) as state:
        sparse = evaluate(model, tokenizer, "niah_single_1", [512], limit=10, seed=0, progress=False)
    assert sparse.scores["niah_single_1"][512] >= dense.scores["niah_single_1"][512] - 10
    assert state.stats.read_fraction < 0.75


def test_learned_roles_find_the_copy_heads(tmp_path, capsys):
    out = tmp_path / "roles.json"
    code = main(["roles", "--model", str(TEACHER), "--method", "hardkuma", "--target", "0.3", "--steps", "60",
                 "--samples", "12", "--budget", "64", "--out", str(out), "--quiet"])
    assert code == 0
    plan = HeadPlan.load(out)
    assert plan.decode_roles == [[R, R], [S, S], [S, S], [R, R]]
    assert "4 of 8 KV heads retrieval" in capsys.readouterr().out
