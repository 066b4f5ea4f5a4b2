"""The head-wise hybrid: exact conversion, its own model type, save / load, the cache it builds, generate, errors."""

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
from hydrahead.cache import HydraCache, cache_nbytes
from hydrahead.compat import cache_arg, output_cache
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
        hybrid = convert(model, HeadPlan.full_attention(model.config), HybridOptions(fusion="concat", fa_position="rope"))
        got = hybrid(x, attention_mask=mask).logits
    assert type(hybrid).__name__ == f"Hydra{'Qwen3' if arch == 'qwen3' else 'Llama'}ForCausalLM"
    assert hybrid.config.model_type == f"hydrahead_{arch}"
    real = mask.bool()  # outputs at padding positions are never read, and differ in what they attend to
    assert (got - expected)[real].abs().max().item() < 1e-5


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_hidden_states_and_tuples_as_transformers_gives_them(arch):
    """output_hidden_states and return_dict=False: an exact conversion gives the original's hidden states (every
    layer's input and the final normed output) and the same tuple; attention weights are refused by name."""
    model = tiny(arch, seed=2)
    x = ids(2, 19, seed=5)
    with torch.no_grad():
        theirs = model(x, output_hidden_states=True)
        hybrid = convert(model, HeadPlan.full_attention(model.config), HybridOptions(fusion="concat", fa_position="rope"))
        ours = hybrid(x, output_hidden_states=True)
        as_tuple = hybrid(x, return_dict=False, use_cache=False)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == model.config.num_hidden_layers + 1
    assert all((a - b).abs().max().item() < 1e-5 for a, b in zip(ours.hidden_states, theirs.hidden_states))
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], ours.logits)
    assert hybrid(x[:, :3]).hidden_states is None  # only when asked
    with pytest.raises(HydraheadError, match="output_attentions is not supported"):
        hybrid(x, output_attentions=True)


@pytest.mark.parametrize("fusion", ["scale", "concat", "gate"])
@pytest.mark.parametrize("fa_position", ["nope_logscale", "rope"])
def test_save_load_round_trip(tmp_path, fusion, fa_position):
    model = tiny()
    options = HybridOptions(fusion=fusion, fa_position=fa_position, gdn_mha=fusion != "gate", logscale_length=16)
    plan = mixed_plan(model)
    model = randomise_new_parameters(convert(model, plan, options))
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
    model = randomise_new_parameters(convert(model, mixed_plan(model, granularity),
                                             HybridOptions(gdn_mha=mha, logscale_length=8)))
    x = ids(2, 29, seed=1)
    with torch.no_grad():
        full = model(x).logits
        cache = HydraCache(model.config)
        steps = [model(x[:, :20], past_key_values=cache, use_cache=True).logits]
        for t in range(20, 29):
            steps.append(model(x[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-4
    assert cache.get_seq_length() == 29


def test_chunked_prefill_with_the_cache_the_model_builds():
    model = tiny(seed=4)
    model = randomise_new_parameters(convert(model, mixed_plan(model), HybridOptions(logscale_length=8)))
    x = ids(1, 50, seed=2)
    with torch.no_grad():
        full = model(x).logits
        first = model(x[:, :17], use_cache=True)
        cache = output_cache(first)
        chunks = [first.logits] + [model(x[:, a:b], past_key_values=cache).logits for a, b in [(17, 18), (18, 50)]]
    assert isinstance(cache, HydraCache) and cache.get_seq_length() == 50
    assert (torch.cat(chunks, dim=1) - full).abs().max().item() < 1e-4


def test_the_cache_appends_in_place():
    """A decode step writes one token into the KV buffer; it does not copy the cache (capacity doubles)."""
    model = tiny(seed=4)
    model = convert(model, mixed_plan(model), HybridOptions(logscale_length=8))
    with torch.no_grad():
        cache = output_cache(model(ids(1, 20), use_cache=True))
        layer = cache.layers[0]
        buffer = layer._keys.data_ptr()
        for t in range(19):  # 20 + 19 tokens fit the doubled capacity of 40
            model(ids(1, 1, seed=t), past_key_values=cache)
        assert layer.length == 39 and layer._keys.data_ptr() != buffer  # grown once, from 20 to 40
        grown = layer._keys.data_ptr()
        model(ids(1, 1, seed=99), past_key_values=cache)
        assert layer._keys.data_ptr() == grown and layer.keys.shape[-2] == 40



def test_decode_steps_update_the_gdn_states_in_place():
    """After the prefill, every GDN state (recurrent and conv) keeps its storage across decode steps."""
    model = tiny(seed=4)
    model = randomise_new_parameters(convert(model, mixed_plan(model), HybridOptions(logscale_length=8)))
    with torch.no_grad():
        cache = output_cache(model(ids(1, 20), use_cache=True))
        held = [(s.recurrent.data_ptr(), s.conv.data_ptr()) for s in cache.gdn if s.recurrent is not None]
        before = [s.recurrent.clone() for s in cache.gdn if s.recurrent is not None]
        for t in range(3):
            model(ids(1, 1, seed=t), past_key_values=cache)
    after = [s for s in cache.gdn if s.recurrent is not None]
    assert held and [(s.recurrent.data_ptr(), s.conv.data_ptr()) for s in after] == held
    assert all(not torch.equal(b, s.recurrent) for b, s in zip(before, after))  # and they did change


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_a_plain_model_decodes_with_the_copy_free_kv_cache(arch):
    """KVCache on a plain Qwen3 / Llama: the same logits as a full forward and as generate() with its own
    cache, a decode step appends into the buffer, and batch selection keeps the right rows."""
    from hydrahead.cache import CacheError, KVCache

    model = tiny(arch, seed=6)
    x = ids(2, 24, seed=3)
    with torch.no_grad():
        full = model(x).logits
        cache = KVCache(model.config, reserve=32)
        steps = [model(x[:, :16], use_cache=True, **cache_arg(cache)).logits]
        buffer = cache.layers[0]._keys.data_ptr()
        for t in range(16, 24):
            steps.append(model(x[:, t:t + 1], use_cache=True, **cache_arg(cache)).logits)
        assert cache.layers[0]._keys.data_ptr() == buffer and cache.get_seq_length() == 24
        assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-4
        cache.batch_select_indices(torch.tensor([1]))
        nxt = model(x[1:, -1:], use_cache=True, **cache_arg(cache)).logits
        again = model(torch.cat([x[1:], x[1:, -1:]], dim=1)).logits[:, -1:]
        assert (nxt - again).abs().max().item() < 1e-4
        ours = model.generate(x, max_new_tokens=6, do_sample=False, **cache_arg(KVCache(model.config)))
        theirs = model.generate(x, max_new_tokens=6, do_sample=False)
    assert torch.equal(ours, theirs)
    with pytest.raises(CacheError, match="cannot be cropped"):
        cache.crop(3)

def test_cache_bytes_match_the_plan():
    model = tiny(seed=5)
    plan = mixed_plan(model)
    options = HybridOptions(conv_size=4)
    model = convert(model, plan, options)
    batch, length = 3, 23
    with torch.no_grad():
        cache = HydraCache(model.config)
        model(ids(batch, length), past_key_values=cache, use_cache=True)
    expected = plan.kv_bytes_per_token(torch.float32) * length * batch
    expected += plan.gdn_state_bytes(batch_size=batch, conv_size=4, dtype=torch.float32)
    assert cache_nbytes(cache) == expected
    # the original model caches every KV head
    assert plan.full_kv_bytes_per_token(torch.float32) > plan.kv_bytes_per_token(torch.float32)


def test_generate_batch_with_left_padding_matches_single_rows():
    model = tiny(seed=6)
    model = randomise_new_parameters(convert(model, mixed_plan(model), HybridOptions(logscale_length=8)))
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


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_generate_prefill_and_decode_equal_one_full_forward(arch):
    """generate() with the cache the model builds itself: its per-step scores equal the logits of one forward
    over the whole generated sequence (the cache was used, and used right)."""
    model = tiny(arch, seed=7, bias=arch == "llama")
    model = randomise_new_parameters(convert(model, mixed_plan(model), HybridOptions(logscale_length=8)))
    x = ids(2, 11, seed=5)
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False, pad_token_id=0,
                             return_dict_in_generate=True, output_scores=True)
        full = model(out.sequences, use_cache=False).logits[:, 10:-1]  # the logits that chose each new token
    assert isinstance(output_cache(out), HydraCache) and output_cache(out).get_seq_length() == 11 + 5
    assert (torch.stack(out.scores, dim=1) - full).abs().max().item() < 1e-4
    seq = x
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out.sequences, seq)


def test_convert_leaves_the_original_untouched_unless_inplace():
    model = tiny(seed=9)
    x = ids(1, 12)
    with torch.no_grad():
        before = model(x).logits
        hybrid = convert(model, mixed_plan(model))
        randomise_new_parameters(hybrid)
        hybrid(x)
        assert type(model) is Qwen3ForCausalLM and not hasattr(model.config, "hydrahead")
        assert torch.equal(model(x).logits, before)
        assert hybrid.model.embed_tokens.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
        shared = convert(model, mixed_plan(model), inplace=True)
    assert shared.model.embed_tokens.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_unknown_keywords_are_errors():
    model = convert(tiny(), mixed_plan(tiny()))
    x = ids(1, 5)
    with pytest.raises(TypeError, match="cache_params|unexpected keyword"):
        model(x, cache_params=None)
    with pytest.raises(TypeError):
        model.model.layers[0].self_attn(torch.zeros(1, 5, 48), None, None, None, None, past_key_value=None)
    with pytest.raises(HydraheadError, match="HydraCache, not a DynamicCache"):
        model(x, past_key_values=DynamicCache())
    with pytest.raises(HydraheadError, match="not two different caches"):
        model(x, past_key_values=HydraCache(model.config), cache=HydraCache(model.config))


def test_new_parameters_train():
    model = tiny(seed=8)
    model = convert(model, mixed_plan(model), HybridOptions(fusion="gate", logscale_length=8))
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
    hybrid = convert(model, mixed_plan(model))
    with pytest.raises(ConversionError, match="already a hybrid"):
        convert(hybrid, mixed_plan(model))
    with pytest.raises(HydraheadError, match="fusion must be one of"):
        HybridOptions(fusion="sum")
    with pytest.raises(ConversionError, match="not a hydrahead hybrid"):
        tiny().save_pretrained(tmp_path / "plain")
        load(tmp_path / "plain")


def test_shifted_sum_conv_equals_depthwise_conv1d_with_gradients():
    from hydrahead.attention.gdn import causal_depthwise_conv

    x = torch.randn(2, 3 + 37, 12, dtype=torch.float64, requires_grad=True)  # [B, K - 1 + T, C]: time-major
    w = torch.randn(12, 1, 4, dtype=torch.float64, requires_grad=True)
    ours = causal_depthwise_conv(x, w)
    ref = torch.nn.functional.conv1d(x.transpose(1, 2), w, groups=12).transpose(1, 2)
    torch.testing.assert_close(ours, ref)
    grads = torch.autograd.grad(ours.square().sum(), (x, w))
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, w))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_the_self_check_catches_a_cache_that_is_not_used(monkeypatch):
    from hydrahead.selfcheck import CachedDecodingError, check_cached_decoding

    plain = tiny(seed=12)
    model = randomise_new_parameters(convert(plain, mixed_plan(plain), HybridOptions(logscale_length=8)))
    assert check_cached_decoding(plain) < 1e-5 and check_cached_decoding(model) < 1e-5
    # what transformers 5.24 did to the old hybrid: every decode step ran as if nothing had been cached
    monkeypatch.setattr(HydraCache, "update", lambda self, k, v, layer_idx: (k, v))
    monkeypatch.setattr(HydraCache, "gdn_state", lambda self, layer_idx: type(self.gdn[0])())
    with pytest.raises(CachedDecodingError, match="the cache is not being used"):
        check_cached_decoding(model)


def test_gamma_calibrated_to_the_original_heads_output_scale():
    """With calibration, an all-FA conversion that keeps RoPE gives back the original heads' outputs up to each
    token's RMS against the heads' mean RMS: much closer to the original than gamma = 1."""
    from hydrahead.calibration import head_output_rms

    model = tiny(seed=13)
    x = ids(2, 30, seed=6)
    plan = HeadPlan.full_attention(model.config)
    options = HybridOptions(fusion="scale", fa_position="rope")
    rms = head_output_rms(model, x)
    assert rms.shape == (3, 6) and (rms > 0).all()
    plain, calibrated = convert(model, plan, options), convert(model, plan, options, calibration_ids=x)
    assert torch.equal(calibrated.model.layers[1].self_attn.gamma, rms[1])
    assert torch.equal(plain.model.layers[1].self_attn.gamma, torch.ones(6))
    with torch.no_grad():
        reference = model(x).logits
        error = {name: (m(x).logits - reference).pow(2).mean().item() for name, m in
                 (("plain", plain), ("calibrated", calibrated))}
    assert error["calibrated"] < 0.5 * error["plain"], error


def test_batch_operations_reach_the_kv_layers_and_the_gdn_states():
    """Selecting and repeating batch rows (what beam search does to a cache) moves the FA keys / values and the
    GDN states together: the next step equals a full forward of the rows chosen, and beam search decodes the same
    with the cache as without it."""
    model = tiny(seed=5)
    model = randomise_new_parameters(convert(model, mixed_plan(model), HybridOptions(logscale_length=8)))
    x, step = ids(3, 20, seed=4), ids(3, 1, seed=5)
    with torch.no_grad():
        cache = output_cache(model(x, use_cache=True))
        assert isinstance(cache, HydraCache) and any(s.recurrent is not None for s in cache.gdn)
        rows = torch.tensor([2, 0])
        cache.batch_select_indices(rows)
        got = model(step[rows], past_key_values=cache).logits
        want = model(torch.cat([x, step], dim=1)[rows]).logits[:, -1:]
        assert (got - want).abs().max().item() < 1e-4
        cache.batch_repeat_interleave(2)  # rows 2, 2, 0, 0 of the 21 tokens so far
        nxt = ids(4, 1, seed=6)
        got = model(nxt, past_key_values=cache).logits
        want = model(torch.cat([torch.cat([x, step], dim=1)[[2, 2, 0, 0]], nxt], dim=1)).logits[:, -1:]
        assert (got - want).abs().max().item() < 1e-4
        beams = dict(num_beams=3, max_new_tokens=5, do_sample=False, early_stopping=True)
        cached = model.generate(x[:1], use_cache=True, **beams)
        uncached = model.generate(x[:1], use_cache=False, **beams)
    assert torch.equal(cached, uncached)


def test_activation_checkpointing_recomputes_the_chosen_layers_with_the_same_gradients():
    """`activation_checkpointing_enable` (transformers' API): the checkpointed layers run again in the backward
    pass, the gradients are those of plain training, a cache is refused while training, and inference keeps it."""
    from hydrahead.modeling import HydraModelError

    model = randomise_new_parameters(convert(tiny(seed=7), mixed_plan(tiny(seed=7)), HybridOptions(logscale_length=8)))
    x = ids(2, 24, seed=8)

    def gradients():
        model.zero_grad()
        model(x, labels=x).loss.backward()  # checkpointed, the default is no cache
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    runs = [0] * len(model.model.layers)
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.register_forward_hook(lambda *_, i=i: runs.__setitem__(i, runs[i] + 1))
    model.train()
    plain = gradients()
    assert runs == [1, 1, 1]
    model.activation_checkpointing_enable(every_n_layers=2)
    assert [layer.gradient_checkpointing for layer in model.model.layers] == [True, False, True]
    runs[:] = [0, 0, 0]
    again = gradients()
    assert runs == [2, 1, 2]  # layers 0 and 2 ran again in the backward pass
    assert len(again) == len(plain) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(again, plain))
    with pytest.raises(HydraModelError, match="use_cache=False"):
        model(x, use_cache=True)
    with torch.no_grad():  # no backward, nothing recomputed: the cache works as ever
        out = model(x, use_cache=True)
    assert output_cache(out).get_seq_length() == 24
    with pytest.raises(HydraModelError, match="every_n_layers"):
        model.activation_checkpointing_enable(every_n_layers=0)
    model.activation_checkpointing_disable()
    assert not any(layer.gradient_checkpointing for layer in model.model.layers)
