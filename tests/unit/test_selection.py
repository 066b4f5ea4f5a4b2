"""Head selection: behaviours, patching on models whose answer is carried by known heads by
construction, path patching, resumable sweeps, fusion and plans."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hydrahead.models import load_tokenizer
from hydrahead.plan import ModelShape
from hydrahead.selection import (
    BEHAVIOURS,
    ScoreConfig,
    Scores,
    SelectionError,
    activation_patching,
    attribution_patching,
    get_behaviours,
    group_units,
    head_units,
    make_plan,
    mean_ablated,
    parse_ratio,
    path_patching,
    prepare_runs,
    rank_normalise,
    retrieval_scores,
    score_heads,
)
from hydrahead.selection.heads import HeadSite, last_logits, residuals, start_at
from hydrahead.selection.scores import BehaviourScores

TEACHER = "models/hydrahead-teacher-3m"
LENGTH = 160
HEAD_DIM = 16


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TEACHER)


def tiny_llama(vocab: int, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=HEAD_DIM, max_position_embeddings=1024, attention_bias=True,
        initializer_range=0.1, pad_token_id=0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def constructed(vocab: int) -> LlamaForCausalLM:
    """A model in which only two heads can move information between positions: sender (0, 0) and
    receiver (1, 2). Every other KV head has a value that ignores its input (weights zero, bias kept),
    so the heads reading it write the same vector on any prompt. The group-mates (0, 1) and (1, 3) do
    read the live values, so their outputs differ between clean and corrupted prompts, but their o_proj
    columns are zero: a correlational score would flag them, a causal one must not."""
    model = tiny_llama(vocab)
    live = {0: 0, 1: 1}  # layer -> its one live KV head
    with torch.no_grad():
        for layer, block in enumerate(model.model.layers):
            attn = block.self_attn
            for kv in range(2):
                rows = slice(kv * HEAD_DIM, (kv + 1) * HEAD_DIM)
                if kv == live[layer]:
                    attn.v_proj.weight[rows] *= 10  # a clear signal in a random model
                else:
                    attn.v_proj.weight[rows] = 0
        model.model.layers[0].self_attn.o_proj.weight[:, HEAD_DIM : 2 * HEAD_DIM] = 0  # head (0, 1)
        model.model.layers[1].self_attn.o_proj.weight[:, 3 * HEAD_DIM :] = 0  # head (1, 3)
    return model


@pytest.fixture(scope="module")
def built(tokenizer):
    model = constructed(len(tokenizer))
    batch = get_behaviours("retrieval")[0].batch(tokenizer, LENGTH, 4, seed=0)
    return model, batch, ModelShape.of(model.config)


# ---- behaviours ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BEHAVIOURS))
def test_behaviour_pairs_are_aligned_and_differ_where_the_answer_is(tokenizer, name):
    behaviour = get_behaviours(name)[0]
    pairs = behaviour.pairs(tokenizer, 512, 3, seed=1)
    assert len(pairs) == 3
    for p in pairs:
        assert len(p.clean) == len(p.corrupt) <= 512
        assert p.target != p.foil
        diff = [i for i, (a, b) in enumerate(zip(p.clean, p.corrupt)) if a != b]
        assert diff, "the corruption must change the prompt"
        # the changed span of the clean prompt holds the target, the corrupted one the foil (as text:
        # a name after "VAR " is the same letters as the answer, but another token); no_repeat is the other way
        # round: the clean answer lists the foil already, and the corrupted one the target
        in_clean, in_corrupt = (p.foil, p.target) if name == "no_repeat" else (p.target, p.foil)
        assert tokenizer.decode([in_clean]).strip() in tokenizer.decode([p.clean[i] for i in diff])
        assert tokenizer.decode([in_corrupt]).strip() in tokenizer.decode([p.corrupt[i] for i in diff])
    again = behaviour.pairs(tokenizer, 512, 3, seed=1)
    assert [p.clean for p in again] == [p.clean for p in pairs]
    assert [p.clean for p in behaviour.pairs(tokenizer, 512, 3, seed=2)] != [p.clean for p in pairs]


def test_multikey_swaps_values_so_every_number_stays_in_the_context(tokenizer):
    p = get_behaviours("multikey")[0].pairs(tokenizer, 400, 1, seed=0)[0]
    assert sorted(p.clean) == sorted(p.corrupt)


def test_common_words_trades_only_the_counts_of_target_and_foil(tokenizer):
    """The corrupted list holds the same words in the same places except that the target (a common word not yet
    named) and the foil (a word seen once) trade counts; the answer already names three other common words."""
    for p in get_behaviours("common_words")[0].pairs(tokenizer, 512, 3, seed=0):
        clean, corrupt = (re.findall(r"\d+\. (\S+)", tokenizer.decode(ids).split("Question:")[0])
                          for ids in (p.clean, p.corrupt))
        changed = [i for i, (a, b) in enumerate(zip(clean, corrupt)) if a != b]
        (target,), (foil,) = {clean[i] for i in changed}, {corrupt[i] for i in changed}
        assert len(clean) == len(corrupt) and target.startswith(tokenizer.decode([p.target]).strip())
        assert foil.startswith(tokenizer.decode([p.foil]).strip())
        assert clean.count(target) == corrupt.count(foil) >= 2 and clean.count(foil) == corrupt.count(target) == 1
        named = re.findall(r"\d+\. (\S+)", tokenizer.decode(p.clean).split("most often in the list are:")[1])
        assert len(named) == 3 and target not in named and all(clean.count(w) >= 2 for w in named)


def test_unknown_behaviour_is_a_clear_error():
    with pytest.raises(SelectionError, match="unknown behaviour 'retreival'.*retrieval"):
        get_behaviours("retreival,induction")


def test_batch_is_left_padded_and_keeps_the_pairs(tokenizer):
    batch = get_behaviours("vt")[0].batch(tokenizer, 512, 3, seed=0)
    widths = batch.mask.sum(-1)
    assert batch.clean.shape == batch.corrupt.shape == batch.mask.shape
    assert int(widths.max()) == batch.clean.shape[1] and bool((batch.mask[:, -1] == 1).all())


# ---- patching on the constructed model -----------------------------------------------------------


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_activation_patching_finds_exactly_the_heads_that_carry_the_answer(built, direction):
    model, batch, shape = built
    runs = prepare_runs(model, batch, direction)
    effects = activation_patching(model, batch, runs, head_units(shape))
    carriers = {"L1.H2", "L0.H0"}
    assert max(effects, key=lambda k: abs(effects[k])) == "L1.H2"
    for name, value in effects.items():
        assert (abs(value) > 0.3) == (name in carriers), (name, value)
    # the muted group-mate reads the live value: its output changes, but it has no effect
    assert not torch.allclose(runs.base_heads[1][:, :, 3], runs.source_heads[1][:, :, 3])
    groups = activation_patching(model, batch, runs, group_units(shape))
    assert {k for k, v in groups.items() if abs(v) > 0.3} == {"L0.KV0", "L1.KV1"}


def test_batched_replicas_equal_one_forward_per_unit(built):
    model, batch, shape = built
    runs = prepare_runs(model, batch)
    together = activation_patching(model, batch, runs, head_units(shape))
    alone = activation_patching(model, batch, runs, head_units(shape), max_tokens=1)
    assert together == pytest.approx(alone, abs=1e-5)
    paths = path_patching(model, batch, runs, [(1, 2)], head_units(shape))
    assert paths == pytest.approx(path_patching(model, batch, runs, [(1, 2)], head_units(shape), max_tokens=1), abs=1e-5)


def test_starting_above_layer_zero_from_the_cached_residual_changes_nothing(built):
    model, batch, _ = built
    full = last_logits(model, batch.clean, batch.mask)
    hidden = residuals(model, batch.clean, batch.mask)
    with torch.no_grad(), start_at(model, 1, hidden[1]):
        resumed = last_logits(model, batch.clean, batch.mask)
    torch.testing.assert_close(resumed, full, atol=1e-5, rtol=1e-5)
    assert all(type(layer).__name__ == "LlamaDecoderLayer" for layer in model.model.layers)  # restored


def test_attribution_patching_is_zero_exactly_where_patching_is(built):
    model, batch, shape = built
    runs = prepare_runs(model, batch)
    estimates = attribution_patching(model, batch, runs, head_units(shape))
    nonzero = {k for k, v in estimates.items() if abs(v) > 1e-6}
    assert nonzero == {"L0.H0", "L1.H2"}
    assert all(p.grad is None for p in model.parameters())


def test_path_patching_finds_the_sender_of_a_known_receiver(built):
    model, batch, shape = built
    runs = prepare_runs(model, batch)
    through_receiver = path_patching(model, batch, runs, [(1, 2)], head_units(shape))
    assert max(through_receiver, key=lambda k: abs(through_receiver[k])) == "L0.H0"
    assert all(abs(v) < 1e-4 for k, v in through_receiver.items() if k != "L0.H0")
    assert abs(through_receiver["L0.H0"]) > 0.3
    # through a head that reads nothing, the same sender has no path, though its total effect is large
    through_dead = path_patching(model, batch, runs, [(1, 0)], head_units(shape))
    assert all(abs(v) < 1e-4 for v in through_dead.values())


def test_path_patching_needs_a_receiver(built):
    model, batch, shape = built
    with pytest.raises(SelectionError, match="at least one receiver"):
        path_patching(model, batch, prepare_runs(model, batch), [], head_units(shape))


# ---- the sweep -----------------------------------------------------------------------------------


def sweep_config(**kw) -> ScoreConfig:
    settings = {"behaviours": ["retrieval", "induction"], "length": LENGTH, "num_pairs": 3, "receivers": 2,
                "retrieval_samples": 2, "max_tokens": 2000}
    return ScoreConfig(**{**settings, **kw})


def test_sweep_ranks_the_carriers_first_and_round_trips(built, tokenizer, tmp_path):
    model, _, _ = built
    scores = score_heads(model, tokenizer, sweep_config(), "constructed", progress=False)
    assert set(scores.ranking()[:2]) == {(1, 2), (0, 0)}
    assert scores.behaviours["retrieval"].receivers[0] == (1, 2)
    assert scores.retrieval_score.shape == (2, 4) and ((scores.retrieval_score >= 0) & (scores.retrieval_score <= 1)).all()
    assert model.config._attn_implementation == "sdpa"  # the retrieval score put it back
    path = scores.save(tmp_path / "scores.json")
    again = Scores.load(path)
    np.testing.assert_allclose(again.fused(), scores.fused(), atol=1e-6)
    assert again.ranking() == scores.ranking()


def test_interrupted_sweep_resumes_to_the_same_scores(built, tokenizer, tmp_path):
    model, _, _ = built
    full = score_heads(model, tokenizer, sweep_config(), "m", progress=False)
    partial = tmp_path / "s.partial.json"
    saves = []

    def stop_after_three(done: int) -> None:
        saves.append(done)
        if len(saves) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_heads(model, tokenizer, sweep_config(), "m", partial=partial, progress=False, on_save=stop_after_three)
    kept = json.loads(partial.read_text())
    assert sum(len(s) for b in kept["effects"].values() for s in b.values()) == saves[-1] > 0
    resumed_saves = []
    resumed = score_heads(model, tokenizer, sweep_config(), "m", partial=partial, progress=False,
                          on_save=resumed_saves.append)
    assert resumed_saves[0] > saves[-1]  # it did not start over
    for name, b in full.behaviours.items():
        np.testing.assert_allclose(resumed.behaviours[name].activation, b.activation, atol=1e-5)
        np.testing.assert_allclose(resumed.behaviours[name].path, b.path, atol=1e-5)
    with pytest.raises(SelectionError, match="other settings"):
        score_heads(model, tokenizer, sweep_config(seed=5), "m", partial=partial, progress=False)


def test_attribution_first_then_patching_for_its_top_heads(built, tokenizer):
    model, _, _ = built
    scores = score_heads(model, tokenizer, sweep_config(attribution_top=2, retrieval_samples=0), "m", progress=False)
    b = scores.behaviours["retrieval"]
    assert b.attribution is not None
    assert set(scores.ranking()[:2]) == {(1, 2), (0, 0)}


def test_a_model_that_does_not_do_the_behaviour_is_refused(tokenizer):
    model = tiny_llama(len(tokenizer))
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.v_proj.weight.zero_()  # no head can move information: clean == corrupted
    with pytest.raises(SelectionError, match="does not do this behaviour"):
        score_heads(model, tokenizer, sweep_config(), progress=False)


def test_sweep_refuses_a_hybrid_and_a_bad_config(built, tokenizer):
    model, _, _ = built
    with pytest.raises(SelectionError, match="direction"):
        score_heads(model, tokenizer, sweep_config(direction="sideways"), progress=False)
    with pytest.raises(SelectionError, match="num_pairs"):
        score_heads(model, tokenizer, ScoreConfig(num_pairs=0), progress=False)
    model.config.hydrahead = {"plan": {}}
    try:
        with pytest.raises(SelectionError, match="not on a converted hybrid"):
            score_heads(model, tokenizer, sweep_config(), progress=False)
    finally:
        del model.config.hydrahead


# ---- retrieval score and ablation ----------------------------------------------------------------


def test_retrieval_score_is_a_share_per_head(built, tokenizer):
    model, _, shape = built
    scores = retrieval_scores(model, tokenizer, LENGTH, num_samples=2)
    assert scores.shape == (shape.num_layers, shape.num_heads)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_mean_ablation_writes_the_mean_into_the_listed_heads_only(built):
    model, batch, shape = built
    means = [torch.randn(shape.num_heads, shape.head_dim) for _ in range(shape.num_layers)]
    with HeadSite(model) as site:
        site.record = {0, 1}
        with torch.no_grad():
            last_logits(model, batch.clean, batch.mask)
        before = [site.recorded[i].clone() for i in (0, 1)]
    with mean_ablated(model, [(1, 2)], means), HeadSite(model) as site:
        site.record = {1}
        with torch.no_grad():
            last_logits(model, batch.clean, batch.mask)
        after = site.recorded[1]
    # HeadSite hooks run in registration order: the ablation has already replaced head (1, 2)
    torch.testing.assert_close(after[:, :, 2], means[1][2].expand_as(after[:, :, 2]))
    torch.testing.assert_close(after[:, :, [0, 1, 3]], before[1][:, :, [0, 1, 3]])


# ---- fusion --------------------------------------------------------------------------------------


def test_rank_normalise_ties_and_noise_floor():
    r = rank_normalise(np.array([[0.5, -0.9], [0.001, 0.0]]), floor=0.01)
    assert r[0, 1] == 1.0 and r[1, 0] == r[1, 1] == 0.0 and 0 < r[0, 0] < 1
    assert rank_normalise(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]


def _scores(shape: ModelShape, act_a: np.ndarray, act_b: np.ndarray) -> Scores:
    zeros = np.zeros((shape.num_layers, shape.num_heads))
    kv = np.zeros((shape.num_layers, shape.num_kv_heads))
    return Scores("m", shape, {}, {
        "retrieval": BehaviourScores(1.0, -1.0, act_a, kv, zeros, [(0, 0)]),
        "induction": BehaviourScores(1.0, -1.0, act_b, kv, zeros, [(0, 0)]),
    })


def test_fused_ranking_follows_the_weights():
    shape = ModelShape(1, 4, 2, 8)
    scores = _scores(shape, np.array([[0.9, 0.5, 0.0, 0.0]]), np.array([[0.0, 0.5, 0.0, 0.9]]))
    assert scores.ranking({"retrieval": 1, "induction": 1})[0] == (0, 1)  # good at both beats best at one
    assert scores.ranking({"retrieval": 10, "induction": 1})[0] == (0, 0)
    assert scores.ranking({"retrieval": 1, "induction": 10})[0] == (0, 3)
    with pytest.raises(SelectionError, match="behaviour 'copying'"):
        scores.fused({"copying": 1})
    with pytest.raises(SelectionError, match="non-negative"):
        scores.fused({"retrieval": -1})


def test_scores_file_errors(tmp_path):
    with pytest.raises(SelectionError, match="does not exist"):
        Scores.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SelectionError, match="not valid JSON"):
        Scores.load(bad)
    bad.write_text(json.dumps({"format": "hydrahead.scores/1", "shape": {"num_layers": 1}}))
    with pytest.raises(SelectionError, match="malformed"):
        Scores.load(bad)


# ---- plans ---------------------------------------------------------------------------------------

SHAPE = ModelShape(num_layers=4, num_heads=8, num_kv_heads=2, head_dim=32)


def ranked_scores(shape: ModelShape = SHAPE) -> Scores:
    """Scores whose fused ranking is known: head (l, h) scores l * H + h, reversed."""
    act = -np.arange(shape.num_layers * shape.num_heads, dtype=float).reshape(shape.num_layers, shape.num_heads)
    act = act - act.min() + 1
    scores = _scores(shape, act, act)
    scores.retrieval_score = np.zeros_like(act)
    scores.retrieval_score[3, 7] = 1.0
    return scores


def test_interp_plan_keeps_the_top_heads():
    plan = make_plan(SHAPE, "interp", "7:1", "query", scores=ranked_scores())
    assert plan.fa_heads == [[0, 1, 2, 3], [], [], []]
    assert plan.meta["strategy"] == "interp" and plan.ratio == "7:1"


def with_kv_ranking(shape: ModelShape, kv_values) -> Scores:
    """ranked_scores, with every behaviour's KV-group effects set to `kv_values` [L, KV] (distinct values)."""
    scores = ranked_scores(shape)
    for b in scores.behaviours.values():
        b.activation_kv = np.asarray(kv_values, dtype=float)
    return scores


def test_interp_lowest_keeps_exactly_the_heads_interp_ranks_last():
    scores = ranked_scores()
    fused = scores.fused()
    # global rule: the 4 lowest fused scores of the whole model (here the last four heads of layer 3)
    plan = make_plan(SHAPE, "interp_lowest", "7:1", "query", scores=scores)
    lowest = {(int(i) // SHAPE.num_heads, int(i) % SHAPE.num_heads) for i in np.argsort(fused.ravel())[:4]}
    assert {(layer, h) for layer, heads in enumerate(plan.fa_heads) for h in heads} == lowest
    assert plan.fa_heads == [[], [], [], [4, 5, 6, 7]] and plan.meta["strategy"] == "interp_lowest"
    top = make_plan(SHAPE, "interp", "7:1", "query", scores=scores)
    assert max(fused[layer, h] for layer, hs in enumerate(plan.fa_heads) for h in hs) < min(
        fused[layer, h] for layer, hs in enumerate(top.fa_heads) for h in hs)
    # per-layer rule: the lowest 2 of every layer, as interp takes the top 2 of every layer
    per_layer = make_plan(SHAPE, "interp_lowest", "3:1", "query", scores=scores, per_layer=True)
    assert per_layer.fa_heads == [sorted(np.argsort(fused[layer])[:2].tolist()) for layer in range(4)]
    assert per_layer.fa_heads == [[6, 7]] * 4
    # KV granularity ranks whole groups by their fused KV score
    kv_scores = with_kv_ranking(SHAPE, [[5, 2], [7, 1], [3, 8], [6, 4]])
    assert make_plan(SHAPE, "interp_lowest", "7:1", "kv", scores=kv_scores).fa_heads == [[], [4, 5, 6, 7], [], []]
    assert make_plan(SHAPE, "interp", "7:1", "kv", scores=kv_scores).fa_heads == [[], [], [4, 5, 6, 7], []]
    # ties (heads under the noise floor all score 0): the heads interp's own ranking lists last
    tied = with_kv_ranking(SHAPE, [[1, 2], [3, 4], [5, 6], [7, 8]])
    for b in tied.behaviours.values():
        b.activation = np.where(np.arange(32).reshape(4, 8) < 6, b.activation, 0.0)  # 26 heads tie at 0
    last = tied.ranking()[-4:]
    assert {(layer, h) for layer, hs in enumerate(make_plan(SHAPE, "interp_lowest", "7:1", scores=tied).fa_heads)
            for h in hs} == set(last) == {(3, 4), (3, 5), (3, 6), (3, 7)}


def test_equal_kv_plan_costs_what_layerwise_3to1_costs():
    from hydrahead.selection import equal_kv_plan

    for shape in (SHAPE, ModelShape(8, 8, 2, 16)):  # the 4-layer teacher's kind, and the 8-layer teacher's shape
        layerwise = make_plan(shape, "layerwise", "3:1")
        units = shape.num_layers * shape.num_kv_heads
        scores = with_kv_ranking(shape, np.random.default_rng(0).permutation(units).reshape(shape.num_layers, -1) + 1)
        plan = equal_kv_plan(layerwise, "interp", scores=scores)
        assert plan.granularity == "kv" and plan.num_cached_kv == layerwise.num_cached_kv
        assert plan.kv_bytes_per_token() == layerwise.kv_bytes_per_token() == (
            shape.num_layers // 4 * shape.num_kv_heads * 2 * shape.head_dim * 2)
        # chosen by interp's KV-group scores: the best groups, not whole layers at the end of each block
        best = np.argsort(-scores.fused(kv=True).ravel(), kind="stable")[:layerwise.num_cached_kv]
        assert {(layer, kv) for layer in range(shape.num_layers) for kv in plan.fa_kv_heads(layer)} == {
            (int(i) // shape.num_kv_heads, int(i) % shape.num_kv_heads) for i in best}
        assert plan.fa_heads != layerwise.fa_heads
    with pytest.raises(SelectionError, match="caches no KV head"):
        equal_kv_plan(make_plan(SHAPE, "random", "1:0"), "interp", scores=ranked_scores())


def test_kv_granularity_keeps_whole_groups_and_saves_cache():
    query = make_plan(SHAPE, "interp", "3:1", "query", scores=ranked_scores())
    kv = make_plan(SHAPE, "interp", "3:1", "kv", scores=ranked_scores())
    assert kv.fa_heads[0] == list(range(8)) and kv.num_fa == query.num_fa == 8
    assert kv.kv_bytes_per_token() <= query.kv_bytes_per_token()


def test_retrieval_score_and_random_strategies():
    assert make_plan(SHAPE, "retrieval_score", "31:1", "query", scores=ranked_scores()).fa_heads[3] == [7]
    a = make_plan(SHAPE, "random", "7:1", seed=1)
    assert a.fa_heads == make_plan(SHAPE, "random", "7:1", seed=1).fa_heads
    assert a.fa_heads != make_plan(SHAPE, "random", "7:1", seed=2).fa_heads
    assert a.num_fa == 4


def test_layerwise_plan_puts_fa_at_the_end_of_each_block():
    shape = ModelShape(8, 4, 2, 16)
    plan = make_plan(shape, "layerwise", "3:1")
    assert [i for i, heads in enumerate(plan.fa_heads) if heads] == [3, 7]
    with pytest.raises(SelectionError, match="7:1 cannot be met.*4 units.*whole number.*ratios it can meet: 1:1, 3:1"):
        make_plan(ModelShape(4, 4, 2, 16), "layerwise", "7:1")


def test_per_layer_plans_and_impossible_ratios_say_what_is_possible():
    plan = make_plan(SHAPE, "interp", "3:1", "query", scores=ranked_scores(), per_layer=True)
    assert [len(h) for h in plan.fa_heads] == [2, 2, 2, 2]
    with pytest.raises(SelectionError, match=r"each layer at kv granularity has 2 units.*ratios it can meet: 1:1"):
        make_plan(SHAPE, "interp", "7:1", "kv", scores=ranked_scores(), per_layer=True)
    with pytest.raises(SelectionError, match="5:1 cannot be met"):
        make_plan(SHAPE, "interp", "5:1", scores=ranked_scores())


def test_kv_budget_fills_greedily_and_rejects_less_than_one_kv_head():
    one_head = 2 * SHAPE.head_dim * 2  # K and V in bf16
    plan = make_plan(SHAPE, "interp", None, "query", kv_budget=one_head, scores=ranked_scores())
    # the best heads 0-3 share KV head 0 of layer 0: one KV head pays for all four
    assert plan.fa_heads[0] == [0, 1, 2, 3] and plan.kv_bytes_per_token() == one_head
    with pytest.raises(SelectionError, match="smaller than one KV head: 128 bytes"):
        make_plan(SHAPE, "interp", "7:1", kv_budget=100, scores=ranked_scores())
    with pytest.raises(SelectionError, match="holds only 4 of the 8 FA units"):
        make_plan(SHAPE, "interp", "3:1", "query", kv_budget=one_head, scores=ranked_scores())


def test_plan_input_errors():
    with pytest.raises(SelectionError, match="bad ratio"):
        parse_ratio("seven to one")
    with pytest.raises(SelectionError, match="unknown strategy"):
        make_plan(SHAPE, "magic", "7:1")
    with pytest.raises(SelectionError, match="needs a scores file"):
        make_plan(SHAPE, "interp", "7:1")
    with pytest.raises(SelectionError, match="scores are for a model"):
        make_plan(ModelShape(2, 8, 2, 32), "interp", "7:1", scores=ranked_scores())
