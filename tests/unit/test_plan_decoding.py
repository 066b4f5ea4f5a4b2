"""One attention path for the whole plan: sparse decoding over per-head quantized caches, the two token rankings
against an oracle, a plan that needs no other argument, left padding."""

import copy

import pytest
import torch
from transformers import Cache

from hydrahead.attention import HybridOptions
from hydrahead.cache import HydraCache, KVCache
from hydrahead.compat import cache_arg
from hydrahead.convert import convert
from hydrahead.decoding import DecodingError, SparseConfig, SparseState, plan_decoding, sparse_decoding
from hydrahead.decoding.attention import TensorKV, ViewKV, decode_step
from hydrahead.decoding.state import LayerSlot
from hydrahead.generation import greedy_generate
from hydrahead.kv import QuantizedKVLayer, blockwise_attention, get_format, plan_cache
from hydrahead.plan import HeadPlan

from .test_plan_kv import PerHeadFakeQuant, ids, tiny

R, S = "retrieval", "sparse"
ROLES = [[R, R], [S, R], [S, S]]
FORMATS = [["tq4:int4", "bf16"], ["fp8", "nvfp4:mxfp4"], ["int4", "tq4"]]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def generate(model, x, mask=None, new=6, **cache):
    mask = torch.ones_like(x) if mask is None else mask
    with torch.no_grad():
        out = model.generate(x, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True, **cache)
    return out.sequences, torch.stack(out.logits, 1)


def hybrid_of(model, plan=None):
    plan = plan or HeadPlan.from_config(model.config, [[1], [0, 2, 3], [2, 3]], "query")
    return convert(copy.deepcopy(model), plan, HybridOptions(logscale_length=64))


# ---- the two rankings against an oracle ------------------------------------------------------------------


def oracle(kind, q, keys, k, sink, recent):
    """The selected token set of one retrieval KV head, computed directly: q [g, D], keys [N, D]."""
    if kind == "attention":
        score = torch.softmax(q @ keys.T / q.shape[-1] ** 0.5, dim=-1).sum(0)
    else:
        score = keys @ q.mean(0)  # the group's mean query . each key: raw, unscaled, no softmax
    n = len(keys)
    forced = set(range(sink)) | set(range(n - recent, n))
    rest = [int(i) for i in score.argsort(descending=True) if int(i) not in forced]
    return forced | set(rest[: k - len(forced)])


def one_step(kind, query, source, k, sink=1, recent=2):
    state = SparseState(SparseConfig(budget=k, sink=sink, recent=recent, score=kind))
    state.begin_forward()
    state.on_attention(1)
    out = decode_step(LayerSlot(state, 0, [0, 1], [True, True]), query, source, None, query.shape[-1] ** -0.5, k)
    return out, {kv: set(state.selected[kv][0][0].tolist()) for kv in (0, 1)}


def test_both_rankings_select_what_the_oracle_selects_over_tensors_and_quantized_views():
    g = torch.Generator().manual_seed(3)
    query = torch.randn(1, 4, 1, 32, generator=g) * 2  # 2 KV heads, 2 query heads each
    keys, values = torch.randn(1, 2, 70, 32, generator=g) * 2, torch.randn(1, 2, 70, 32, generator=g)
    layer = QuantizedKVLayer(0, get_format("bf16", 32), get_format("bf16", 32), window=4, sink=1, block_size=32)
    layer.update(keys, values)
    view, _ = layer.update(keys[:, :, :0], values[:, :, :0])  # two blocks quantized since, a view over them
    assert len(view.blocks) == 2
    stored = view.dense()[0]  # what the quantized keys decode to
    picks = {}
    for kind in ("attention", "authors"):
        _, chosen = one_step(kind, query, TensorKV(keys, values), 12)
        _, from_view = one_step(kind, query, ViewKV(view), 12)
        for kv in (0, 1):
            q = query[0, 2 * kv:2 * kv + 2, 0]
            assert chosen[kv] == oracle(kind, q, keys[0, kv], 12, 1, 2)
            assert from_view[kv] == oracle(kind, q, stored[0, kv].float(), 12, 1, 2)
        picks[kind] = chosen
    assert picks["attention"] != picks["authors"]  # the example tells the two rules apart


# ---- roles and formats together -------------------------------------------------------------------------


def reference_cache(model, plan):
    """Dense tensors fake-quantized per head as `plan` says: sparse decoding over them reads what the quantized
    cache decodes, through the tensor path."""
    layers = [PerHeadFakeQuant().setup(plan, i, 32) for i in range(plan.shape.num_layers)]
    return HydraCache(model.config, kv_layers=layers) if hasattr(model.config, "hydrahead") else Cache(layers=layers)


@pytest.mark.parametrize("kind", ["plain", "hybrid"])
@pytest.mark.parametrize("score", ["attention", "authors"])
def test_sparse_decoding_over_per_head_formats_equals_it_over_the_decoded_tensors(kind, score):
    model = tiny(layers=3, seed=5)
    model = hybrid_of(model) if kind == "hybrid" else model
    own = model.head_plan if kind == "hybrid" else HeadPlan.full_attention(model.config)
    plan = own.with_roles(ROLES).with_kv_formats(FORMATS, sink=2, window=6, block_size=32)
    x = ids(2, 100, seed=5)
    settings = {"budget": 24, "sink": 2, "recent": 4, "score": score}
    with plan_decoding(model, plan, sparse=True, **settings) as run:
        cache = run(model)
        tokens, logits = generate(model, x, **cache_arg(cache))
    assert run.state.stats.read_fraction < 0.8 and cache.quantized_tokens >= 64
    with sparse_decoding(model, plan, **settings, mode="token"):
        ref_tokens, ref_logits = generate(model, x, **cache_arg(reference_cache(model, plan)))
    assert torch.equal(tokens, ref_tokens)
    assert (logits - ref_logits).abs().max() < 2e-4
    dense_tokens, dense_logits = generate(model, x)
    assert (logits - dense_logits).abs().max() > 1e-3  # not vacuous: formats and selection change the logits
    assert cache.nbytes() - sum(s.nbytes() for s in getattr(cache, "gdn", [])) == plan.kv_bytes(105, 2, torch.float32)


def test_a_budget_covering_the_context_with_bf16_gives_the_hybrids_own_logits():
    model = hybrid_of(tiny(layers=3, seed=6)).to(torch.bfloat16)
    x = ids(2, 90, seed=6)
    tokens, logits = generate(model, x)
    plan = model.head_plan.with_roles(ROLES).with_kv_formats("bf16", sink=2, window=4, block_size=32)
    # the two context managers plan_decoding combines; fallback off: the gather path, over every token
    with blockwise_attention(model), sparse_decoding(model, plan, budget=10_000, sink=2, recent=4, fallback=False) as state:
        cache = plan_cache(model.config, plan)
        got_tokens, got_logits = generate(model, x, **cache_arg(cache))
    assert cache.quantized_tokens == 64 and state.stats.dense_steps == 0
    assert torch.equal(tokens, got_tokens)
    assert (logits.float() - got_logits.float()).abs().max() < 0.05  # bf16 attention in another order


@pytest.mark.parametrize("kind", ["plain", "hybrid"])
def test_a_window_covering_everything_gives_the_unquantized_logits(kind):
    model = tiny(layers=3, seed=7)
    model = hybrid_of(model) if kind == "hybrid" else model
    own = model.head_plan if kind == "hybrid" else HeadPlan.full_attention(model.config)
    plan = own.with_roles(ROLES).with_decode(budget=20, sink=2, recent=4)
    x = ids(2, 60, seed=7)
    with plan_decoding(model, plan) as run:  # roles and decode settings from the plan alone
        tokens, logits = generate(model, x, **run.cache_kwargs(model))
    with plan_decoding(model, plan.with_kv_formats("tq4:int4", window=512, sink=2)) as run:
        cache = run(model)
        got_tokens, got_logits = generate(model, x, **cache_arg(cache))
    assert cache.quantized_tokens == 0 and run.state.stats.read_fraction < 1.0
    assert torch.equal(tokens, got_tokens) and (logits - got_logits).abs().max() < 1e-5


def test_left_padded_batches():
    """Unquantized (a window covering everything), each row decodes as it would alone; quantized, blocks hold
    positions, not tokens, so the batch equals its per-head fake-quantized reference, and padding is never picked."""
    model = hybrid_of(tiny(layers=3, seed=8))
    plan = model.head_plan.with_roles(ROLES).with_decode(budget=20, sink=2, recent=4)
    x = ids(2, 90, seed=8)
    mask = torch.ones_like(x)
    mask[1, :19], x[1, :19] = 0, 0
    wide = plan.with_kv_formats(FORMATS, sink=2, window=512)
    with plan_decoding(model, wide) as run:
        tokens, logits = generate(model, x, mask, **run.cache_kwargs(model))
        for row, n in enumerate((90, 71)):
            alone_tokens, alone_logits = generate(model, x[row:row + 1, -n:], **run.cache_kwargs(model))
            assert torch.equal(alone_tokens[0, n:], tokens[row, 90:])
            assert (alone_logits[0] - logits[row]).abs().max() < 1e-4
    narrow = plan.with_kv_formats(FORMATS, sink=2, window=6, block_size=32)
    with plan_decoding(model, narrow) as run:
        tokens, logits = generate(model, x, mask, **run.cache_kwargs(model))
        for kv, (index, keep, _) in run.state.selected.items():
            assert (index[1][keep[1]] >= 19).all(), f"KV head {kv} selected padding"
    with sparse_decoding(model, narrow, budget=20, sink=2, recent=4):
        ref_tokens, ref_logits = generate(model, x, mask, **cache_arg(reference_cache(model, narrow)))
    assert torch.equal(tokens, ref_tokens) and (logits - ref_logits).abs().max() < 2e-4


def test_greedy_generate_takes_the_run_as_its_cache_factory(tokenizer, tmp_path):
    model = tiny(layers=3, seed=9)
    plan = HeadPlan.full_attention(model.config).with_roles(ROLES).with_kv_formats("tq4:int4", window=8, block_size=32)
    plan = plan.with_decode(budget=40, recent=8)
    from transformers import Qwen3ForCausalLM

    config = copy.deepcopy(model.config)
    config.vocab_size, config.eos_token_id, config.pad_token_id = len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(0)
    lm = Qwen3ForCausalLM(config).eval()
    lm.config._attn_implementation = "sdpa"
    prompts = ["The grass is green. " * 20, "One of the special magic numbers is: 12 " * 8]
    with plan_decoding(lm, plan) as run:
        texts, _, _ = greedy_generate(lm, tokenizer, prompts, 6, cache_factory=run)
    assert len(texts) == 2 and run.state.stats.steps == 5
    assert lm.config._attn_implementation == "sdpa"  # put back


def test_errors_name_the_problem():
    model = tiny(layers=3)
    hybrid = hybrid_of(model)
    with pytest.raises(DecodingError, match="`hydrahead roles"), plan_decoding(model, sparse=True):
        pass
    with pytest.raises(DecodingError, match="the plan has none"), plan_decoding(model, HeadPlan.full_attention(model.config), sparse=True):
        pass
    with pytest.raises(Exception, match="FA heads differ"), plan_decoding(hybrid, HeadPlan.full_attention(model.config)):
        pass
    with pytest.raises(Exception, match="convert the model with it first"), plan_decoding(model, hybrid.head_plan):
        pass
    with pytest.raises(DecodingError, match="budget only applies with sparse decoding"), plan_decoding(model, budget=8):
        pass
    with pytest.raises(DecodingError, match="need KV formats"), plan_decoding(model, kv_window=8):
        pass
    # a plain model without a plan decodes as it always did
    with plan_decoding(model) as run:
        assert run(model) is None and run.state is None
    assert isinstance(plan_cache(model.config), KVCache)  # the plain model's copy-free cache


def test_a_hybrid_converted_with_a_full_plan_needs_nothing_else(tmp_path):
    model = tiny(layers=3, seed=10)
    plan = HeadPlan.from_config(model.config, [[1], [0, 2, 3], [2, 3]], "query").with_roles(ROLES) \
        .with_kv_formats(FORMATS, sink=2, window=6, block_size=32).with_decode(budget=20, sink=2, recent=4)
    hybrid = convert(copy.deepcopy(model), plan, HybridOptions(logscale_length=64))
    from hydrahead.convert import load, save

    hybrid = load(save(hybrid, tmp_path / "hybrid"))
    assert hybrid.head_plan.to_dict() == plan.to_dict()
    x = ids(2, 90, seed=10)
    # plain generate(): the model's own cache stores every KV head in the plan's format
    with torch.no_grad():
        out = hybrid(x, use_cache=True)
    cache = out[next(k for k in ("cache", "past_key_values") if k in out)]
    assert type(cache.layers[1]).__name__ == "MixedKVLayer" and cache.layers[1].quantized_tokens == 64
    tokens, logits = generate(hybrid, x)
    with plan_decoding(hybrid, sparse=False) as run:
        assert run.state is None
        same_tokens, same_logits = generate(hybrid, x, **run.cache_kwargs(hybrid))
    assert torch.equal(tokens, same_tokens) and (logits - same_logits).abs().max() < 1e-5
    # plan_decoding with no argument: the plan's roles and decode settings too
    with plan_decoding(hybrid) as run:
        sparse_tokens, _ = generate(hybrid, x, **run.cache_kwargs(hybrid))
    assert run.setup.sparse.budget == 20 and run.state.stats.read_fraction < 1.0
