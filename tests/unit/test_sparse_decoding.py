"""Sparse decoding (LycheeDecode): selection, reuse, the dense fallback, exactness, padding, hybrids, errors."""

import copy
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from hydrahead.attention import HybridOptions
from hydrahead.cli import main
from hydrahead.convert import convert
from hydrahead.decoding import (
    DecodingError,
    SparseConfig,
    parse_budget,
    select_tokens,
    sparse_decoding,
)
from hydrahead.decoding.attention import NAME, SLOT, gathered_attend
from hydrahead.decoding.roles import resolve_roles, role_plan, uniform_roles
from hydrahead.decoding.select import forced_tokens, selection_mask
from hydrahead.plan import HeadPlan, ModelShape, PlanError

VOCAB = 97
R, S = "retrieval", "sparse"


def tiny(arch="qwen3", layers=4, seed=0):
    torch.manual_seed(seed)
    common = {"vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": layers,
              "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 256,
              "tie_word_embeddings": True, "pad_token_id": 0}
    model = (Qwen3ForCausalLM(Qwen3Config(**common)) if arch == "qwen3" else LlamaForCausalLM(LlamaConfig(**common)))
    model.config._attn_implementation = "sdpa"
    return model.eval()


def batch(lengths=(41, 30), seed=0):
    """Left-padded random prompts of different lengths: ids, attention mask [B, T]."""
    width = max(lengths)
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, width - n :] = torch.randint(1, VOCAB, (n,), generator=g)
        mask[i, width - n :] = 1
    return ids, mask


def generate(model, ids, mask, new=8):
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits, 1)


ROLES = [[R, R], [S, R], [S, S], [R, S]]


# ---- selection ------------------------------------------------------------------------------------------


def test_topk_keeps_sink_and_recent_and_the_top_tokens():
    scores = torch.zeros(1, 20)
    scores[0, [7, 11, 3]] = torch.tensor([5.0, 4.0, 3.0])
    index, keep = select_tokens(scores, None, k=7, sink=2, recent=3)
    assert index.tolist() == [[0, 1, 7, 11, 17, 18, 19]]
    assert keep.all()
    index, _ = select_tokens(scores, None, k=8, sink=2, recent=3)
    assert index.tolist() == [[0, 1, 3, 7, 11, 17, 18, 19]]


def test_block_selection_takes_whole_blocks_with_sink_and_recent():
    scores = torch.zeros(2, 300)  # blocks of 64: 0-63, ..., 256-299 (partial)
    scores[:, 150] = 9.0
    index, keep = select_tokens(scores, None, k=150, sink=4, recent=8, block_size=64)
    blocks = sorted({i // 64 for i in index[0].tolist()})
    assert blocks == [0, 2, 4]  # sink block, the block of token 150, the recent (partial) block
    assert index.shape == (2, 3 * 64)
    assert keep.sum().item() == 2 * (64 + 64 + 44)  # the partial block's missing tail is not kept
    assert selection_mask(index, keep, 300)[0, 256:].all() and not selection_mask(index, keep, 300)[0, 64:128].any()


def test_selection_respects_padding_and_counts_sink_from_the_first_real_token():
    scores = torch.rand(2, 30, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1, :12] = False  # left padding
    scores[1, :12] = 100.0  # padding that would win on score alone
    index, keep = select_tokens(scores, valid, k=10, sink=2, recent=3)
    assert set(index[1].tolist()) >= {12, 13, 27, 28, 29}
    assert (index[1][keep[1]] >= 12).all() and keep.all()
    forced = forced_tokens(valid, 2, 3)
    assert forced[1].nonzero().flatten().tolist() == [12, 13, 27, 28, 29]
    # a row with fewer real tokens than the budget: the extra picks are never kept
    index, keep = select_tokens(scores, valid, k=25, sink=2, recent=3)
    assert keep[1].sum().item() == 18 and (index[1][keep[1]] >= 12).all()


def test_gathered_attention_over_all_tokens_equals_dense():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 2, 3, 8, generator=g), torch.randn(2, 2, 17, 8, generator=g), torch.randn(2, 2, 17, 8, generator=g)
    index = torch.randperm(17, generator=g).expand(2, 2, 17)
    out = gathered_attend(q, k, v, torch.tensor([0, 1]), index, torch.ones(2, 2, 17, dtype=torch.bool), 8**-0.5)
    expected = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5, -1) @ v
    assert (out - expected).abs().max() < 1e-6
    # a non-contiguous cache takes the per-head gather path with the same result
    kt, vt = k.transpose(0, 1).contiguous().transpose(0, 1), v.transpose(0, 1).contiguous().transpose(0, 1)
    out2 = gathered_attend(q, kt, vt, torch.tensor([0, 1]), index, torch.ones(2, 2, 17, dtype=torch.bool), 8**-0.5)
    assert (out2 - expected).abs().max() < 1e-6


# ---- the decoder on whole models -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_budget_covering_all_tokens_equals_dense(arch):
    model = tiny(arch)
    ids, mask = batch()
    tokens, logits = generate(model, ids, mask)
    # fallback off: the gather path really runs over every token
    with sparse_decoding(model, ROLES, budget=10_000, fallback=False) as state:
        got_tokens, got_logits = generate(model, ids, mask)
    assert torch.equal(tokens, got_tokens)
    assert (logits - got_logits).abs().max() < 1e-5
    assert state.stats.steps == 7 and state.stats.dense_steps == 0


def test_budget_larger_than_context_falls_back_to_dense():
    model = tiny()
    ids, mask = batch()
    tokens, logits = generate(model, ids, mask)
    for budget in (500, 1.0):
        with sparse_decoding(model, ROLES, budget=budget) as state:
            got_tokens, got_logits = generate(model, ids, mask)
        # dense decode steps run hydrahead's attention (gqa_decode), the reference sdpa: equal up to rounding
        assert torch.equal(tokens, got_tokens)
        torch.testing.assert_close(got_logits, logits, atol=1e-5, rtol=1e-5)
        assert state.stats.read_fraction == 1.0
    # a budget that the context outgrows: dense while it covers the context, sparse after (dense_share 1.0)
    with sparse_decoding(model, ROLES, budget=44, sink=2, recent=4, dense_share=1.0) as state:
        _, got_logits = generate(model, ids, mask, new=8)
    torch.testing.assert_close(got_logits[:, :4], logits[:, :4], atol=1e-5, rtol=1e-5)  # contexts 41..44: dense
    assert (got_logits[:, 4:] - logits[:, 4:]).abs().max() > 1e-3
    assert state.stats.read_fraction < 1.0
    # by default a budget of 0.4 of the context or more runs dense: 44 of 41..48 keys, 16 of them sparse
    with sparse_decoding(model, ROLES, budget=44, sink=2, recent=4) as state:
        _, got_logits = generate(model, ids, mask, new=8)
    torch.testing.assert_close(got_logits, logits, atol=1e-5, rtol=1e-5)
    assert state.stats.read_fraction == 1.0
    with sparse_decoding(model, ROLES, budget=16, sink=2, recent=4) as state:
        generate(model, ids, mask, new=8)
    assert state.stats.read_fraction < 1.0
    with pytest.raises(DecodingError, match="dense_share"):
        SparseConfig(dense_share=0)


def test_sparse_heads_reuse_the_nearest_lower_retrieval_head_with_the_same_kv_index():
    model = tiny(layers=5)
    roles = [[R, R], [S, R], [R, S], [S, S], [S, R]]
    ids, mask = batch()
    with sparse_decoding(model, roles, budget=12, sink=2, recent=4) as state:
        generate(model, ids, mask, new=3)
    assert state.sources == {(1, 0): 0, (2, 1): 1, (3, 0): 2, (3, 1): 1, (4, 0): 2}
    assert state.stats.read_fraction < 0.8


def test_left_padded_batch_matches_each_row_alone():
    """Padding is never selected and never counted as a sink: a row decodes as it would alone."""
    model = tiny()
    ids, mask = batch((41, 30))
    # dense_share 1.0: the sparse path at any budget below the context (by default the short row alone, 16 of
    # 30-34 keys, would run dense while the batch, 41 keys with its padding, runs sparse)
    with sparse_decoding(model, ROLES, budget=16, sink=2, recent=4, dense_share=1.0) as state:
        tokens, logits = generate(model, ids, mask)
        for kv, (index, keep, _) in state.selected.items():
            picked = index[1][keep[1]]
            assert (picked >= 11).all(), f"KV head {kv} selected padding"
        for row, n in enumerate((41, 30)):
            alone_tokens, alone_logits = generate(model, ids[row : row + 1, -n:], mask[row : row + 1, -n:])
            assert torch.equal(alone_tokens[0, n:], tokens[row, ids.shape[1]:])
            assert (alone_logits[0] - logits[row]).abs().max() < 1e-4


def test_block_mode_dense_correction_and_reading_less():
    model = tiny()
    ids, mask = batch((200, 150))
    with sparse_decoding(model, ROLES, budget=130, mode="block", recent=8, dense_share=1.0) as state:
        generate(model, ids, mask, new=5)
    assert 0.5 < state.stats.read_fraction < 1.0
    with sparse_decoding(model, ROLES, budget=16, recent=4, dense_every=2) as state:
        generate(model, ids, mask, new=7)
    assert state.stats.steps == 6 and state.stats.dense_steps == 3


def test_context_manager_restores_the_model_and_refuses_nesting():
    model = tiny()
    with sparse_decoding(model, ROLES, budget=16, recent=4):
        assert model.config._attn_implementation == NAME
        with pytest.raises(DecodingError, match="already on"), sparse_decoding(model, ROLES, budget=16, recent=4):
            pass
    assert model.config._attn_implementation == "sdpa"
    assert not any(hasattr(m, SLOT) for m in model.modules())


def test_without_roles_the_models_own_plan_or_a_refusal_naming_hydrahead_roles():
    model = tiny(layers=3)
    with pytest.raises(DecodingError, match="`hydrahead roles"), sparse_decoding(model, None, budget=16, recent=4):
        pass
    roles = [[R, R], [S, R], [S, S]]
    plain = convert(copy.deepcopy(model), HeadPlan.full_attention(model.config), HybridOptions(fusion="concat"))
    with pytest.raises(DecodingError, match="hybrid's plan has none.*`hydrahead roles"):
        sparse_decoding(plain, None, budget=16, recent=4).__enter__()
    hybrid = convert(copy.deepcopy(model), HeadPlan.full_attention(model.config).with_roles(roles),
                     HybridOptions(fusion="concat"))
    assert hybrid.head_plan.decode_roles == roles
    ids, mask = batch()
    with sparse_decoding(hybrid, None, budget=12, recent=4) as state:
        tokens, logits = generate(hybrid, ids, mask)
    assert state.sources == {(1, 0): 0, (2, 0): 0, (2, 1): 1}  # the plan's roles, not a uniform rule
    with sparse_decoding(hybrid, roles, budget=12, recent=4):
        again, again_logits = generate(hybrid, ids, mask)
    assert torch.equal(tokens, again) and torch.equal(logits, again_logits)


def test_hybrid_fa_heads_decode_sparsely():
    model = tiny(layers=3)
    roles = [[R, R], [S, R], [S, S]]
    ids, mask = batch()
    # an all-FA hybrid computes what the original does, so sparse decoding must give the same tokens
    hybrid = convert(copy.deepcopy(model), HeadPlan.full_attention(model.config), HybridOptions(fusion="concat", fa_position="rope"))
    with sparse_decoding(model, roles, budget=12, recent=4):
        tokens, logits = generate(model, ids, mask)
    with sparse_decoding(hybrid, roles, budget=12, recent=4):
        h_tokens, h_logits = generate(hybrid, ids, mask)
    assert torch.equal(tokens, h_tokens) and (logits - h_logits).abs().max() < 1e-5
    # a mixed plan whose FA heads spread unevenly over KV groups: exact when the budget covers everything
    mixed = convert(copy.deepcopy(model), HeadPlan.from_config(model.config, [[1], [0, 4, 5], [2]]))
    tokens, logits = generate(mixed, ids, mask)
    with sparse_decoding(mixed, roles, budget=10_000, fallback=False):
        got_tokens, got_logits = generate(mixed, ids, mask)
    assert torch.equal(tokens, got_tokens) and (logits - got_logits).abs().max() < 1e-5
    with sparse_decoding(mixed, roles, budget=12, recent=4) as state:
        generate(mixed, ids, mask)
    assert state.stats.read_fraction < 1.0


# ---- roles, budgets and errors ---------------------------------------------------------------------------


def test_budget_parsing_and_bad_budgets():
    assert parse_budget("4096") == 4096 and parse_budget("0.1") == 0.1 and parse_budget(1.0) == 1.0
    assert SparseConfig(0.25, sink=2, recent=2).tokens(100) == 25
    assert SparseConfig(0.01, sink=4, recent=32).tokens(100) == 36  # never below sink + recent
    for bad in ("0", "-3", "1.5", "abc", 0.0, "nan"):
        with pytest.raises(DecodingError):
            parse_budget(bad)
    with pytest.raises(DecodingError, match="cannot hold the 4 sink and 32 recent"):
        SparseConfig(budget=16)
    with pytest.raises(DecodingError, match="selection mode"):
        SparseConfig(mode="pages")
    with pytest.raises(DecodingError, match="dense_every"):
        SparseConfig(dense_every=0)


def test_roles_in_the_plan_round_trip_and_are_checked(tmp_path):
    config = tiny().config
    plan = role_plan(config, ROLES, roles_method="test")
    path = plan.save(tmp_path / "plan.json")
    assert '["sparse", "retrieval"]' in path.read_text()  # one line per layer
    again = HeadPlan.load(path)
    assert again.decode_roles == ROLES and again.num_retrieval == 4 and "decode roles SR" in again.summary()
    assert resolve_roles(path, config) == ROLES
    # plan files without roles still load
    old = json.loads(path.read_text())
    del old["decode_roles"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert HeadPlan.load(tmp_path / "old.json").decode_roles is None
    with pytest.raises(PlanError, match="has no decode roles"):
        resolve_roles(tmp_path / "old.json", config)
    with pytest.raises(PlanError, match="layer 0 must be retrieval"):
        role_plan(config, [[S, R], [S, S], [S, S], [S, S]])
    with pytest.raises(PlanError, match="one role per KV head"):
        role_plan(config, [[R, R, R], [S, S], [S, S], [S, S]])
    with pytest.raises(PlanError, match="lists 3 layers but the model has 4"):
        role_plan(config, [[R, R], [S, S], [S, S]])
    with pytest.raises(PlanError, match="unknown role 'dense'"):
        role_plan(config, [[R, R], ["dense", S], [S, S], [S, S]])
    other = role_plan(tiny(layers=3).config, [[R, R], [S, S], [S, S]])
    with pytest.raises(PlanError, match="the plan is for a model with 3 layers"):
        sparse_decoding(tiny(), other).__enter__()
    assert uniform_roles(ModelShape(4, 6, 2, 8)) == [[R, R], [S, S], [R, R], [S, S]]


def test_cli_generate_and_eval_with_sparse_decoding(tiny_model_dir, tmp_path, capsys):
    plan = role_plan(ModelShape(2, 4, 2, 8), [[R, R], [S, R]])
    plan.save(tmp_path / "roles.json")
    args = ["generate", "--model", str(tiny_model_dir), "--prompt", "The grass is green. " * 12, "--max_new_tokens", "4"]
    assert main(args + ["--sparse-decode", "--budget", "40", "--roles", str(tmp_path / "roles.json")]) == 0
    assert "sparse decode: budget 40" in capsys.readouterr().err
    # no roles anywhere: refused, naming the command that learns them (no silent uniform rule)
    assert main(args + ["--sparse_decode", "--budget", "0.5", "--selection", "block"]) == 2
    assert "`hydrahead roles" in capsys.readouterr().err
    assert main(args + ["--sparse-decode", "--budget", "2"]) == 2
    assert "cannot hold the 4 sink and 32 recent" in capsys.readouterr().err
    assert main(args + ["--budget", "100"]) == 2
    assert "--budget only applies with --sparse_decode" in capsys.readouterr().err
    # roles and a 4-bit cache together
    assert main(args + ["--sparse-decode", "--budget", "40", "--roles", str(tmp_path / "roles.json"), "--kv-format",
                        "tq4", "--kv-window", "8", "--kv-block", "32", "--selection-score", "authors"]) == 0
    err = capsys.readouterr().err
    assert "kv cache tq4:tq4 (sink 4, window 8, block 32)" in err
    assert "sparse decode: budget 40, token selection, authors score" in err
    # a plan that carries roles, formats and decode settings needs no other flag
    plan.with_kv_formats("fp8", window=8).with_decode(budget=40, recent=8).save(tmp_path / "all.json")
    assert main(args + ["--plan", str(tmp_path / "all.json")]) == 0
    err = capsys.readouterr().err
    assert "kv cache fp8:fp8 (sink 4, window 8, block 64)" in err and "sparse decode: budget 40" in err
    assert main(args + ["--plan", str(tmp_path / "all.json"), "--no-sparse-decode", "--budget", "50"]) == 2
    assert "--budget only applies with --sparse_decode" in capsys.readouterr().err
    wrong = role_plan(ModelShape(3, 4, 2, 8), [[R, R], [S, R], [S, S]])
    wrong.save(tmp_path / "wrong.json")
    assert main(args + ["--sparse-decode", "--budget", "40", "--roles", str(tmp_path / "wrong.json")]) == 2
    assert "the plan is for a model with 3 layers" in capsys.readouterr().err
    code = main(["eval", "--model", str(tiny_model_dir), "--tasks", "niah_single_1", "--limit", "2", "--quiet",
                 "--sparse-decode", "--budget", "64", "--roles", str(tmp_path / "roles.json"),
                 "--output_path", str(tmp_path / "results")])
    assert code == 0
    config = json.loads(next((tmp_path / "results").glob("*/config.json")).read_text())
    assert config["sparse_decode"]["budget"] == 64
