"""The head plan's KV formats (plan/2): per-head formats and sizes, exact bytes that equal the cache's, old plans,
row-wise decoding, and a per-head cache against a fake-quantized reference."""

import json
from itertools import pairwise

import pytest
import torch
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM
from transformers.cache_utils import Cache, DynamicLayer

from hydrahead.attention import HybridOptions
from hydrahead.cache import cache_nbytes
from hydrahead.convert import convert
from hydrahead.kv import (
    MixedKVLayer,
    QuantizedHydraCache,
    QuantizedKVCache,
    QuantizedKVLayer,
    blockwise_attention,
    parse_cache_spec,
    plan_cache,
)
from hydrahead.plan import HeadPlan, PlanError

VOCAB = 97
SPECS = ["bf16", "fp8", "fp8-head", "fp8-none", "int4", "int4-token", "mxfp4", "nvfp4", "tq4", "tq4-qjl"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(layers=2, seed=0):
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=0)
    model = Qwen3ForCausalLM(config)
    model.config._attn_implementation = "sdpa"
    with torch.no_grad():  # sharper attention than at initialisation, so that quantization shows
        for name, p in model.named_parameters():
            if "k_proj" in name or "q_proj" in name:
                p.mul_(6.0)
    return model.eval()


def ids(batch, length, seed=0):
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# layer 0: tq4 keys with int4 values beside bf16; layer 1: fp8 (window 16) beside nvfp4 keys with mxfp4 values
FORMATS = [["tq4:int4", "bf16"], ["fp8", "nvfp4:mxfp4"]]
WINDOWS = [[8, 8], [16, 8]]


def mixed_plan(config, sink=3, block=32):
    return HeadPlan.full_attention(config).with_kv_formats(FORMATS, sink=sink, window=WINDOWS, block_size=block)


# ---- the formats ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", [(2, 3, 64, 32), (1, 2, 45, 32), (5, 32)])
def test_stored_bytes_are_exact_and_rows_decode_alone(spec, shape):
    fmt = parse_cache_spec(spec)[0].build(32)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 3
    q = fmt.quantize(x)
    assert fmt.stored_nbytes(shape) == q.nbytes
    n = len(x.reshape(-1, 32))
    rows = torch.tensor([0, n // 2, 3, n - 1, n // 2])
    assert torch.equal(fmt.dequantize_rows(q, rows), fmt.dequantize(q).float().reshape(-1, 32)[rows])


# ---- the plan -------------------------------------------------------------------------------------------


def test_plan_v2_round_trips_and_plan_v1_files_load(tmp_path):
    config = tiny().config
    plan = mixed_plan(config).with_roles([["retrieval"] * 2, ["sparse", "retrieval"]]).with_decode(budget=48, score="authors")
    path = plan.save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    assert data["format"] == "hydrahead.plan/2"
    assert data["kv_formats"] == [["tq4:int4-token", "bf16:bf16"], ["fp8:fp8", "nvfp4:mxfp4"]]  # canonical
    assert '["fp8:fp8", "nvfp4:mxfp4"]' in path.read_text()  # one line per layer
    again = HeadPlan.load(path)
    assert again.to_dict() == plan.to_dict()
    assert again.head_kv(1, 0).window == 16 and again.head_kv(1, 1).window == 8 and again.head_kv(0, 0).sink == 3
    assert "KV formats fp8:fp8 nvfp4:mxfp4" in again.summary() and "budget 48" in again.summary()
    old = {"format": "hydrahead.plan/1", "model": vars(plan.shape), "granularity": "kv", "fa_heads": plan.fa_heads,
           "meta": {}, "decode_roles": plan.decode_roles}
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = HeadPlan.load(tmp_path / "old.json")
    assert loaded.decode_roles == plan.decode_roles and loaded.kv_formats is None and loaded.decode is None
    assert loaded.kv_bytes_per_token("float32") == 2 * 2 * 2 * 32 * 4


@pytest.mark.parametrize(("change", "message"), [
    ({"kv_formats": [["tq4:int9", "bf16"], ["bf16", "bf16"]]}, "layer 0, KV head 0: unknown KV format 'int9'"),
    ({"kv_formats": [["bf16"], ["bf16"]]}, "kv_formats layer 0: expected one entry per KV head"),
    ({"kv_sizes": {"window": 8}}, "kv_sizes .* only apply with kv_formats"),
    ({"kv_formats": [["bf16"] * 2] * 2, "kv_sizes": {"block_size": 40}}, "multiple of 32"),
    ({"kv_formats": [["bf16"] * 2] * 2, "kv_sizes": {"windw": 8}}, "no entry 'windw'"),
    ({"decode": {"budget": 0}}, "decode settings: a budget of 0 tokens"),
    ({"decode": {"budgets": 64}}, r"decode settings \['budgets'\]: it takes budget"),
    ({"decode": {"score": "max"}}, "selection score must be one of"),
])
def test_bad_plans_name_the_problem(change, message):
    base = HeadPlan.full_attention(tiny().config).to_dict()
    with pytest.raises(PlanError, match=message):
        HeadPlan.from_dict({**base, **change})


def test_a_format_the_head_dim_cannot_serve():
    shape = {"num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "head_dim": 24}
    data = {"format": "hydrahead.plan/2", "model": shape, "fa_heads": [[0, 1]], "kv_formats": [["tq4"]]}
    with pytest.raises(PlanError, match="power-of-two head_dim"):
        HeadPlan.from_dict(data)


# ---- bytes: the plan's count is the cache's -------------------------------------------------------------


def run_steps(model, cache, x, bounds):
    """Forward chunks [a, b) of x for consecutive bounds, then one token at a time; logits and the bytes after
    each forward [(tokens so far, cache bytes)]."""
    logits, sizes = [], []
    with torch.no_grad():
        ends = [*bounds, *range(bounds[-1] + 1, x.shape[1] + 1)]
        for a, b in pairwise([0, *ends]):
            logits.append(model(x[:, a:b], past_key_values=cache, use_cache=True).logits)
            sizes.append((b, cache.nbytes() if hasattr(cache, "nbytes") else None))
    return torch.cat(logits, dim=1), sizes


@pytest.mark.parametrize("batch", [1, 3])
def test_the_plans_bytes_equal_the_caches_measured_bytes_with_per_head_formats(batch):
    model = tiny()
    plan = mixed_plan(model.config)
    x = ids(batch, 120)
    with blockwise_attention(model):
        cache = plan_cache(model.config, plan)
        _, sizes = run_steps(model, cache, x, [2, 45, 100])
    assert isinstance(cache, QuantizedKVCache) and all(isinstance(layer, MixedKVLayer) for layer in cache.layers)
    groups = cache.layers[1].groups
    assert [(g, layer.key_format.name, layer.value_format.name, layer.window) for g, layer in groups] == \
           [([0], "fp8", "fp8", 16), ([1], "nvfp4", "mxfp4", 8)]
    assert cache.quantized_tokens == 96
    for tokens, measured in sizes:
        assert measured == plan.kv_bytes(tokens, batch, torch.float32), tokens
    assert sum(cache.parts().values()) == cache.nbytes()
    # per token: a block's bytes of every group / the block size, scales and fp8's tensor scale included
    per_token = plan.kv_bytes_per_token()
    assert plan.kv_bytes(100 + 32, 1, "float32") - plan.kv_bytes(100, 1, "float32") == 32 * per_token
    d = 32
    codes = {"tq4:int4": d / 2 + 2 + d / 2 + 4 * d / 32, "bf16": 4 * d, "fp8": 2 * d + 2 * 4 / 32,
             "nvfp4:mxfp4": d / 2 + d / 16 + 4 / 32 + d / 2 + d / 32}
    assert per_token == pytest.approx(sum(codes[s] for layer in FORMATS for s in layer), abs=0)


def test_a_hybrids_bytes_with_formats_and_the_gdn_state_apart():
    model = tiny(layers=3, seed=2)
    plan = HeadPlan.from_config(model.config, [[1], [0, 2, 3], [2]], "query")
    hybrid = convert(model, plan, HybridOptions(logscale_length=64))
    formats = [["int4", "bf16"], ["tq4:int4", "mxfp4"], ["fp8", "nvfp4"]]
    with_formats = plan.with_kv_formats(formats, sink=2, window=8, block_size=32)
    x = ids(2, 90, seed=2)
    with blockwise_attention(hybrid):
        cache = plan_cache(hybrid.config, with_formats)
        got, sizes = run_steps(hybrid, cache, x, [40])
    assert isinstance(cache, QuantizedHydraCache)
    assert isinstance(cache.layers[0], QuantizedKVLayer) and isinstance(cache.layers[1], MixedKVLayer)
    gdn = cache.parts()["gdn_state"]
    for tokens, measured in sizes:
        assert measured - gdn == with_formats.kv_bytes(tokens, 2, torch.float32)
    assert cache.nbytes() == cache_nbytes(cache)
    # the plain cache of the same plan: every token in the model's dtype, as the plan counts it
    plain = plan_cache(hybrid.config)
    exact, _ = run_steps(hybrid, plain, x, [40])
    assert cache_nbytes(plain) - sum(s.nbytes() for s in plain.gdn) == plan.kv_bytes(90, 2, torch.float32)
    assert (got - exact).abs().max() > 1e-3  # the formats are really applied


# ---- per-head formats against a reference ---------------------------------------------------------------


class PerHeadFakeQuant(DynamicLayer):
    """Dense keys and values in which each head's blocks are replaced by quantize -> dequantize in that head's own
    formats when they leave its window, at the step the real cache quantizes them."""

    def setup(self, plan, layer, head_dim):
        self.heads = []
        for kv in plan.fa_kv_heads(layer):
            head = plan.head_kv(layer, kv)
            keys, values = parse_cache_spec(head.spec)
            self.heads.append([keys.build(head_dim), values.build(head_dim), head.window, head.block_size, head.sink])
        return self

    def update(self, key_states, value_states, *args, **kwargs):
        out = super().update(key_states, value_states)
        for h, state in enumerate(self.heads):
            kf, vf, window, block, done = state
            while self.keys.shape[-2] - done >= window + block:
                part = slice(done, done + block)
                self.keys, self.values = self.keys.clone(), self.values.clone()
                self.keys[:, h:h + 1, part] = kf.dequantize(kf.quantize(self.keys[:, h:h + 1, part]))
                self.values[:, h:h + 1, part] = vf.dequantize(vf.quantize(self.values[:, h:h + 1, part]))
                done += block
            state[4] = done
        return out


def test_per_head_formats_equal_a_per_head_fake_quantized_reference():
    model = tiny(seed=1)
    plan = mixed_plan(model.config)
    x = ids(2, 112, seed=1)
    reference = Cache(layers=[PerHeadFakeQuant().setup(plan, i, 32) for i in range(2)])
    expected, _ = run_steps(model, reference, x, [45, 75])
    with blockwise_attention(model):
        got, _ = run_steps(model, plan_cache(model.config, plan), x, [45, 75])
    exact, _ = run_steps(model, DynamicCache(), x, [45])
    assert (got - expected).abs().max().item() < 2e-4
    assert (got - exact).abs().max().item() > 1e-3
