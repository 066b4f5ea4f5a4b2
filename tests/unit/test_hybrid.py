"""The head-wise hybrid: exact conversion, save / load, the hybrid cache, generate, errors."""

import pytest
import torch
from transformers import (
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from hydrahead.attention import HybridOptions
from hydrahead.cache import HybridCache, cache_nbytes
from hydrahead.convert import ConversionError, convert, load, save
from hydrahead.errors import HydraheadError
from hydrahead.plan import HeadPlan, PlanError

VOCAB = 97


def tiny(arch="qwen3", attn="sdpa", seed=0, bias=False):
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=6,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=64, attention_bias=bias,
                  tie_word_embeddings=True, pad_token_id=0)
    if arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.config._attn_implementation = attn
    return model.eval()


def mixed_plan(model, granularity="query"):
    heads = [[0, 1, 2], [], [3, 4, 5]] if granularity == "kv" else [[1], [0, 4, 5], [2]]
    return HeadPlan.from_config(model.config, heads, granularity)


def randomise_new_parameters(model):
    """Conversion starts the new gates at the identity; move them so that the tests see them work."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            for name in ("fa_gate", "head_gate"):
                rows = attn.rows(name)
                rows.copy_(torch.randn(rows.shape, generator=g) * 0.2)
            for p in (getattr(attn, "gamma", None), getattr(attn.fa, "logscale_slope", None)):
                if p is not None:
                    p.copy_(1 + torch.rand(p.shape, generator=g))
            if attn.gdn is not None:
                attn.gdn.conv.add_(torch.randn(attn.gdn.conv.shape, generator=g) * 0.2)
    return model


def ids(batch, length, seed=0):
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_all_fa_rope_concat_is_exact(arch, attn):
    model = tiny(arch, attn, bias=arch == "llama")
    x = ids(2, 37)
    mask = torch.ones_like(x)
    mask[1, :5] = 0  # left padding in the second row
    with torch.no_grad():
        expected = model(x, attention_mask=mask).logits
        convert(model, HeadPlan.full_attention(model.config), HybridOptions(fusion="concat", fa_position="rope"))
        got = model(x, attention_mask=mask).logits
    assert type(model).__name__ == f"Hydra{'Qwen3' if arch == 'qwen3' else 'Llama'}ForCausalLM"
    assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("fusion", ["scale", "concat", "gate"])
@pytest.mark.parametrize("fa_position", ["nope_logscale", "rope"])
def test_save_load_round_trip(tmp_path, fusion, fa_position):
    model = tiny()
    options = HybridOptions(fusion=fusion, fa_position=fa_position, gdn_mha=fusion != "gate", logscale_length=16)
    plan = mixed_plan(model)
    randomise_new_parameters(convert(model, plan, options))
    x = ids(2, 40)
    with torch.no_grad():
        expected = model(x).logits
    save(model, tmp_path / "hybrid")
    again = load(tmp_path / "hybrid")
    assert again.head_plan == plan and again.hybrid_options == options
    assert HeadPlan.load(tmp_path / "hybrid" / "plan.json") == plan
    with torch.no_grad():
        assert torch.equal(again(x).logits, expected)


@pytest.mark.parametrize("granularity", ["query", "kv"])
@pytest.mark.parametrize("mha", [True, False])
def test_decode_matches_full_forward(granularity, mha):
    model = tiny(seed=3)
    randomise_new_parameters(convert(model, mixed_plan(model, granularity), HybridOptions(gdn_mha=mha, logscale_length=8)))
    x = ids(2, 29, seed=1)
    with torch.no_grad():
        full = model(x).logits
        cache = HybridCache(3)
        steps = [model(x[:, :20], past_key_values=cache, use_cache=True).logits]
        for t in range(20, 29):
            steps.append(model(x[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-4
    assert cache.get_seq_length() == 29


def test_chunked_prefill_and_a_plain_dynamic_cache():
    model = tiny(seed=4)
    randomise_new_parameters(convert(model, mixed_plan(model), HybridOptions(logscale_length=8)))
    x = ids(1, 50, seed=2)
    with torch.no_grad():
        full = model(x).logits
        cache = DynamicCache()  # what generate() and users pass: upgraded layer by layer
        chunks = [model(x[:, a:b], past_key_values=cache, use_cache=True).logits for a, b in [(0, 17), (17, 18), (18, 50)]]
    assert (torch.cat(chunks, dim=1) - full).abs().max().item() < 1e-4


def test_cache_bytes_match_the_plan():
    model = tiny(seed=5)
    plan = mixed_plan(model)
    options = HybridOptions(conv_size=4)
    convert(model, plan, options)
    batch, length = 3, 23
    with torch.no_grad():
        cache = HybridCache(3)
        model(ids(batch, length), past_key_values=cache, use_cache=True)
    expected = plan.kv_bytes_per_token(torch.float32) * length * batch
    expected += plan.gdn_state_bytes(batch_size=batch, conv_size=4, dtype=torch.float32)
    assert cache_nbytes(cache) == expected
    # the original model caches every KV head
    assert plan.full_kv_bytes_per_token(torch.float32) > plan.kv_bytes_per_token(torch.float32)


def test_generate_batch_with_left_padding_matches_single_rows():
    model = tiny(seed=6)
    randomise_new_parameters(convert(model, mixed_plan(model), HybridOptions(logscale_length=8)))
    a, b = ids(1, 13, seed=3), ids(1, 7, seed=4)
    batch = torch.zeros(2, 13, dtype=torch.long)
    batch[0], batch[1, 6:] = a[0], b[0]
    mask = (torch.arange(13) >= torch.tensor([[0], [6]])).long()
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        together = model.generate(batch, attention_mask=mask, **kwargs)[:, 13:]
        alone_a = model.generate(a, attention_mask=torch.ones_like(a), **kwargs)[:, 13:]
        alone_b = model.generate(b, attention_mask=torch.ones_like(b), **kwargs)[:, 7:]
        # positions as generate() derives them from the mask (the FA query scale counts real keys)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(batch, attention_mask=mask, position_ids=positions).logits[1, -1]
        logits_alone = model(b).logits[0, -1]
    assert torch.equal(together[0], alone_a[0]) and torch.equal(together[1], alone_b[0])
    assert (logits - logits_alone).abs().max().item() < 1e-4


def test_generate_greedy_matches_argmax_loop():
    model = tiny(seed=7)
    randomise_new_parameters(convert(model, mixed_plan(model), HybridOptions(logscale_length=8)))
    x = ids(1, 11, seed=5)
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=5, do_sample=False, pad_token_id=0)
        seq = x
        for _ in range(5):
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, seq)


def test_new_parameters_train():
    model = tiny(seed=8)
    convert(model, mixed_plan(model), HybridOptions(fusion="gate", logscale_length=8))
    model.train()
    x = ids(2, 21)
    model(x, labels=x).loss.backward()
    attn = model.model.layers[1].self_attn
    for name, p in [("in_proj", attn.in_proj.weight), ("A_log", attn.gdn.A_log), ("conv", attn.gdn.conv),
                    ("dt_bias", attn.gdn.dt_bias), ("logscale_slope", attn.fa.logscale_slope)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # the zero-initialised gate rows get a gradient (2 * sigmoid has slope 1/2 at 0)
    assert attn.in_proj.weight.grad[sum(list(attn.split_sizes.values())[:3]):][: attn.split_sizes["fa_gate"]].abs().sum() > 0


def test_errors(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=20))
    with pytest.raises(ConversionError, match="unsupported architecture 'gpt2'.*converts llama, qwen3"):
        convert(gpt2, HeadPlan.full_attention(tiny().config))
    model = tiny()
    other = HeadPlan.from_config(Qwen3Config(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
                                             head_dim=8, hidden_size=64), [[0], [], []])
    with pytest.raises(PlanError, match="plan is for a model with 3 layers x 8 query heads"):
        convert(model, other)
    convert(model, mixed_plan(model))
    with pytest.raises(ConversionError, match="already a hybrid"):
        convert(model, mixed_plan(model))
    with pytest.raises(HydraheadError, match="fusion must be one of"):
        HybridOptions(fusion="sum")
    with pytest.raises(ConversionError, match="not a hydrahead hybrid"):
        tiny().save_pretrained(tmp_path / "plain")
        load(tmp_path / "plain")
    used = DynamicCache()
    with torch.no_grad():
        tiny()(ids(1, 4), past_key_values=used, use_cache=True)
        with pytest.raises(HydraheadError, match="needs a fresh cache"):
            model(ids(1, 4), past_key_values=used, use_cache=True)


def test_shifted_sum_conv_equals_depthwise_conv1d_with_gradients():
    from hydrahead.attention.gdn import causal_depthwise_conv

    x = torch.randn(2, 12, 3 + 37, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, 1, 4, dtype=torch.float64, requires_grad=True)
    ours = causal_depthwise_conv(x, w)
    ref = torch.nn.functional.conv1d(x, w, groups=12)
    torch.testing.assert_close(ours, ref)
    grads = torch.autograd.grad(ours.square().sum(), (x, w))
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, w))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
