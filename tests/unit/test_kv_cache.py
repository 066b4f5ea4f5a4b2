"""The quantized KV cache: against a fake-quantized dense reference, window and sink handling, no
re-quantization, blockwise vs dense attention, true bytes, batches with padding, hybrids, the CLI, errors."""

import json
from itertools import pairwise

import pytest
import torch
from transformers import (
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.cache_utils import Cache, DynamicLayer, QuantizedLayer

from hydrahead.attention import HybridOptions
from hydrahead.cache import HydraCache, cache_nbytes
from hydrahead.cli import main
from hydrahead.convert import convert
from hydrahead.evaluation import evaluate
from hydrahead.generation import greedy_generate
from hydrahead.kv import (
    KVCacheError,
    KVCacheFactory,
    KVFormatError,
    QuantizedHydraCache,
    QuantizedKVCache,
    QuantizedKVLayer,
    blockwise_attention,
    canonical_spec,
    get_format,
    parse_cache_spec,
    quantized_cache,
)
from hydrahead.kv.attention import online_softmax_attention
from hydrahead.kv.metrics import attention_errors, fake_quantize, relative_mse
from hydrahead.models import load_causal_lm
from hydrahead.plan import HeadPlan

VOCAB = 97


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(arch="qwen3", head_dim=32, seed=0, layers=2, **extra):
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=512,
                  tie_word_embeddings=True, pad_token_id=0, **extra)
    model = Qwen3ForCausalLM(Qwen3Config(**common)) if arch == "qwen3" else LlamaForCausalLM(LlamaConfig(**common))
    model.config._attn_implementation = "sdpa"
    with torch.no_grad():  # sharper attention than at initialisation, so that quantization shows
        for name, p in model.named_parameters():
            if "k_proj" in name or "q_proj" in name:
                p.mul_(6.0)
    return model.eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A random tiny Qwen3 with head_dim 32 (what every format can serve) and the test tokenizer, saved."""
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("kv_model")
    Qwen3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def ids(batch, length, seed=0):
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


class FakeQuant:
    """Reference layer: dense tensors in which each block is replaced by quantize -> dequantize when it leaves
    the window, at the same step as the real cache; attention then runs sdpa over the dense tensors."""

    def setup(self, spec, window, sink, block_size, head_dim):
        keys, values = parse_cache_spec(spec)
        self.kf, self.vf = keys.build(head_dim), values.build(head_dim)
        self.window, self.block_size, self.done = window, block_size, sink  # tokens [sink, done) are quantized
        return self

    def update(self, key_states, value_states, *args, **kwargs):
        out = super().update(key_states, value_states)  # what this step attends: before fake quantization
        while self.keys.shape[-2] - self.done >= self.window + self.block_size:
            part = slice(self.done, self.done + self.block_size)
            self.keys, self.values = self.keys.clone(), self.values.clone()
            self.keys[..., part, :] = self.kf.dequantize(self.kf.quantize(self.keys[..., part, :]))
            self.values[..., part, :] = self.vf.dequantize(self.vf.quantize(self.values[..., part, :]))
            self.done += self.block_size
        return out


class FakeQuantLayer(FakeQuant, DynamicLayer):
    pass


def reference_cache(model, spec, window, sink, block_size):
    c = model.config
    layers = [FakeQuantLayer().setup(spec, window, sink, block_size, c.head_dim) for _ in range(c.num_hidden_layers)]
    return HydraCache(c, kv_layers=layers) if hasattr(c, "hydrahead") else Cache(layers=layers)


def run_steps(model, cache, x, prefill, chunks=()):
    """Logits of a prefill of `prefill` tokens, then optional multi-token chunks, then one token at a time."""
    bounds = [0, prefill, *chunks]
    with torch.no_grad():
        logits = [model(x[:, a:b], past_key_values=cache, use_cache=True).logits for a, b in pairwise(bounds)]
        for t in range(bounds[-1], x.shape[1]):
            logits.append(model(x[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_bf16_with_everything_in_the_window_equals_a_dynamic_cache(arch):
    model = tiny(arch)
    x = ids(2, 41)
    expected = run_steps(model, DynamicCache(), x, 30)
    with blockwise_attention(model):
        cache = QuantizedKVCache(model.config, "bf16", window=64, sink=4, block_size=32)
        got = run_steps(model, cache, x, 30)
    assert cache.quantized_tokens == 0
    assert (got - expected).abs().max().item() < 1e-5
    assert model.config._attn_implementation == "sdpa"  # the context manager put it back


@pytest.mark.parametrize("spec", ["tq4:int4", "fp8", "int4", "int4-token", "mxfp4", "nvfp4", "tq4-qjl:mxfp4", "bf16"])
def test_prefill_and_decode_equal_a_fake_quantized_reference(spec):
    model = tiny(seed=1)
    x = ids(2, 112, seed=1)
    window, sink, block = 8, 3, 32
    # a prefill of 45 (one block quantized after it), a 30-token chunk over quantized blocks, then decode
    expected = run_steps(model, reference_cache(model, spec, window, sink, block), x, 45, chunks=(75,))
    with blockwise_attention(model):
        cache = QuantizedKVCache(model.config, spec, window=window, sink=sink, block_size=block)
        got = run_steps(model, cache, x, 45, chunks=(75,))
    assert cache.quantized_tokens == 96  # 112 - 3 sink = 109 = 3 blocks + 13 in the window
    exact = run_steps(model, DynamicCache(), x, 45)
    assert (got - expected).abs().max().item() < 2e-4
    if spec != "bf16":  # the comparison is not vacuous: quantization moves the logits
        assert (got - exact).abs().max().item() > 1e-3


def test_window_and_sink_decide_which_tokens_are_quantized_and_when():
    fmt = get_format("int4", 32)
    layer = QuantizedKVLayer(0, fmt, get_format("int4", 32), window=10, sink=3, block_size=32)
    k, v = torch.randn(1, 2, 80, 32), torch.randn(1, 2, 80, 32)
    view, _ = layer.update(k[:, :, :44], v[:, :, :44])  # 3 sink + 41 recent: 41 < 10 + 32, nothing moves
    assert not layer.blocks and not view.blocks and layer.keys.shape[-2] == 41
    view, _ = layer.update(k[:, :, 44:45], v[:, :, 44:45])  # 42 recent: the oldest 32 leave the window
    assert len(layer.blocks) == 1 and layer.keys.shape[-2] == 10
    assert not view.blocks and view.recent[0].shape[-2] == 42  # this step still attends them in full precision
    assert torch.equal(layer.sink_keys, k[:, :, :3]) and torch.equal(layer.keys, k[:, :, 35:45])
    assert torch.equal(fmt.dequantize(layer.blocks[0][0]), fmt.dequantize(fmt.quantize(k[:, :, 3:35])))
    for t in range(45, 76):  # 31 more tokens: the window grows to 41, one short of the next block
        view, _ = layer.update(k[:, :, t:t + 1], v[:, :, t:t + 1])
    assert len(layer.blocks) == 1 and layer.keys.shape[-2] == 41 and layer.get_seq_length() == 76
    layer.update(k[:, :, 76:77], v[:, :, 76:77])
    assert len(layer.blocks) == 2 and layer.quantized_tokens == 64
    dense_k, _ = layer.update(k[:, :, 77:80], v[:, :, 77:80])[0].dense()
    assert torch.equal(dense_k[:, :, :3], k[:, :, :3]) and torch.equal(dense_k[:, :, 67:], k[:, :, 67:80])


def test_prompt_shorter_than_the_sink_and_a_zero_window():
    layer = QuantizedKVLayer(0, get_format("bf16", 32), get_format("bf16", 32), window=0, sink=4, block_size=32)
    k = torch.randn(1, 1, 40, 32)
    layer.update(k[:, :, :2], k[:, :, :2])
    assert layer.sink_keys.shape[-2] == 2 and layer.keys.shape[-2] == 0
    layer.update(k[:, :, 2:40], k[:, :, 2:40])  # 2 more fill the sink, then 36 recent: one block, 4 stay
    assert layer.sink_keys.shape[-2] == 4 and len(layer.blocks) == 1 and layer.keys.shape[-2] == 4


class TransformersQuantizedLayer(QuantizedLayer):
    """transformers' residual-window QuantizedLayer with our int4 codec as the backend."""

    def __init__(self, fmt, residual_length):
        super().__init__(residual_length=residual_length)
        self.fmt = fmt

    def _quantize(self, tensor, axis):
        return self.fmt.quantize(tensor)

    def _dequantize(self, q_tensor):
        return self.fmt.dequantize(q_tensor)


def test_quantized_blocks_are_never_requantized_unlike_transformers_quantized_cache():
    # fp8 with one scale per quantization call: transformers re-quantizes its whole past at every flush,
    # so as later tokens grow larger the first ones are rounded again on a coarser grid
    fmt = get_format("fp8", 32)
    ours = QuantizedKVLayer(0, fmt, fmt, window=16, sink=0, block_size=32)
    theirs = TransformersQuantizedLayer(fmt, residual_length=16)
    stream = torch.randn(1, 2, 200, 32, generator=torch.Generator().manual_seed(0))
    stream = stream * torch.linspace(1, 3, 200)[:, None]
    ours.update(stream[:, :, :50], stream[:, :, :50])
    theirs.update(stream[:, :, :50], stream[:, :, :50])
    first_block = ours.blocks[0][0]  # a view into the packed buffers, which grow (and move) as blocks come
    stored = [first_block.payload.clone(), first_block.scales["scale"].clone()]
    ours_err, theirs_err = [], []
    for t in range(50, 200):
        view, _ = ours.update(stream[:, :, t:t + 1], stream[:, :, t:t + 1])
        keys_theirs, _ = theirs.update(stream[:, :, t:t + 1], stream[:, :, t:t + 1])
        ours_err.append(relative_mse(stream[:, :, :32], view.dense()[0][:, :, :32]))
        theirs_err.append(relative_mse(stream[:, :, :32], keys_theirs[:, :, :32]))
    assert len(ours.blocks) == 5  # the first block, read back from the packed buffers, is unchanged:
    now = ours.blocks[0][0]
    assert torch.equal(now.payload.view(torch.uint8), stored[0].view(torch.uint8))
    assert torch.equal(now.scales["scale"], stored[1])
    assert len(set(ours_err)) == 1  # the first tokens' error is fixed once they are quantized
    assert len(set(theirs_err)) > 3 and theirs_err[-1] > 2 * ours_err[-1]  # and compounds there


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
@pytest.mark.parametrize("q_len", [1, 7])
def test_blockwise_attention_equals_dense_attention(mask_kind, q_len):
    g = torch.Generator().manual_seed(2)
    layer = QuantizedKVLayer(0, get_format("tq4", 32), get_format("nvfp4", 32), window=5, sink=2, block_size=32)
    B, H, G, T = 2, 2, 3, 140
    k, v = torch.randn(B, H, T, 32, generator=g), torch.randn(B, H, T, 32, generator=g)
    layer.update(k[:, :, : T - q_len], v[:, :, : T - q_len])
    view, _ = layer.update(k[:, :, T - q_len:], v[:, :, T - q_len:])
    assert len(view.blocks) >= 3
    query = torch.randn(B, H * G, q_len, 32, generator=g) * 3
    causal = torch.arange(T)[None, :] <= torch.arange(T - q_len, T)[:, None]  # [Q, T]
    allowed = causal.expand(B, 1, q_len, T).clone()
    allowed[1, :, :, :9] = False  # left padding in the second row
    mask = {"none": None, "bool": allowed,
            "float": torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)}[mask_kind]
    if mask_kind == "none":
        allowed = causal.expand(B, 1, q_len, T)
    dk, dv = view.dense()
    dk, dv = dk.repeat_interleave(G, dim=1), dv.repeat_interleave(G, dim=1)
    s = (query @ dk.mT / 32**0.5).masked_fill(~allowed, float("-inf"))
    expected = (torch.softmax(s, -1) @ dv).transpose(1, 2)
    got = online_softmax_attention(query, view, mask, 32**-0.5)
    assert (got - expected).abs().max().item() < 1e-5
    # heads gathered per query head (a hybrid FA branch with unequal groups) read the same blocks
    heads = torch.tensor([1, 0, 1])
    picked = online_softmax_attention(query[:, :3], view.index_select(1, heads), mask, 32**-0.5)
    dk, dv = view.dense()
    s = (query[:, :3] @ dk[:, heads].mT / 32**0.5).masked_fill(~allowed, float("-inf"))
    assert (picked - (torch.softmax(s, -1) @ dv[:, heads]).transpose(1, 2)).abs().max().item() < 1e-5


@pytest.mark.parametrize("spec, codec_ratio", [("mxfp4", 64 / 17), ("nvfp4", 64 / 18), ("tq4", 64 / 18),
                                               ("int4", 64 / 20), ("tq4:int4", 64 / 19), ("fp8", 2.0)])
def test_nbytes_is_the_sum_of_parts_and_shrinks_like_the_codec(spec, codec_ratio):
    model = tiny(layers=2)
    caches = {s: QuantizedKVCache(model.config, s, window=32, sink=4, block_size=64) for s in ("bf16", spec)}
    k = torch.randn(1, 2, 2100, 32).bfloat16()  # a bf16 model: the sink and window cost 2 bytes an element
    for cache in caches.values():
        for layer in range(2):
            cache.update(k, k.clone(), layer)
    cache = caches[spec]
    parts = cache.parts()
    blocks = [q for layer in cache.layers for pair in layer.blocks for q in pair]
    assert parts["quantized_payload"] + parts["quantized_scales"] == sum(q.nbytes for q in blocks)
    # 512 bytes a token (2 layers x K, V x 2 heads x 32 x 2 bytes): 4 sink tokens, 2096 - 32 * 64 = 48 in the window
    assert (parts["sink"], parts["window"]) == (4 * 512, 48 * 512)
    assert cache.nbytes() == sum(parts.values()) == cache_nbytes(cache)
    ratio = caches["bf16"].nbytes() / cache.nbytes()
    assert 0.9 * codec_ratio < ratio <= codec_ratio  # the sink and window cost a little at 2K tokens
    if spec != "fp8":
        assert ratio > 3.0


def test_batch_with_left_padding_through_greedy_generate(model_dir):
    model, tok = load_causal_lm(model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    prompts = ["The grass is green. " * 12 + "The sky", "One of the special magic numbers is: 12 " * 3]
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    assert lengths[0] > lengths[1] + 10 and lengths[0] > 60  # padding, and blocks leave the window
    window, sink, block = 8, 2, 32
    factory = KVCacheFactory("tq4:int4", window=window, sink=sink, block_size=block)
    got, n_prefill, _ = greedy_generate(model, tok, prompts, 12, cache_factory=factory)
    assert model.config._attn_implementation == "hydrahead"
    expected, _, _ = greedy_generate(model, tok, prompts, 12,
                                     cache_factory=lambda m: reference_cache(m, "tq4:int4", window, sink, block))
    assert got == expected and n_prefill == sum(lengths)
    everything_kept = KVCacheFactory("bf16", window=512)
    assert greedy_generate(model, tok, prompts, 12, cache_factory=everything_kept)[0] == greedy_generate(
        model, tok, prompts, 12)[0]


def test_evaluate_records_the_kv_cache(model_dir):
    model, tok = load_causal_lm(model_dir)
    factory = KVCacheFactory("tq4:int4", window=16, sink=2, block_size=32)
    result = evaluate(model, tok, "niah_single_1", [256], limit=1, progress=False, cache_factory=factory)
    assert result.config["kv_cache"] == {"kv_format": "tq4:int4-token", "window": 16, "sink": 2, "block_size": 32}


def test_generate_with_the_cache_matches_the_reference():
    model = tiny(seed=3)
    x = ids(1, 70, seed=3)
    kwargs = {"attention_mask": torch.ones_like(x), "max_new_tokens": 20, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad(), blockwise_attention(model):
        cache = QuantizedKVCache(model.config, "mxfp4:int4", window=8, sink=2, block_size=32)
        got = model.generate(x, past_key_values=cache, return_dict_in_generate=True, output_scores=True, **kwargs)
        ref = model.generate(x, past_key_values=reference_cache(model, "mxfp4:int4", 8, 2, 32),
                             return_dict_in_generate=True, output_scores=True, **kwargs)
    assert torch.equal(got.sequences, ref.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(got.scores, ref.scores)) < 2e-4
    assert cache.get_seq_length() == 89 and cache.quantized_tokens == 64


def test_the_fa_heads_of_a_hybrid():
    model = tiny(seed=4, layers=3)
    # layer 1's FA heads sit unevenly in the KV groups, so the FA branch gathers heads from the view
    plan = HeadPlan.from_config(model.config, [[1], [0, 2, 3], [2]], "query")
    model = convert(model, plan, HybridOptions(logscale_length=64))
    x = ids(2, 90, seed=4)
    spec, window, sink, block = "tq4:int4", 8, 2, 32
    expected = run_steps(model, reference_cache(model, spec, window, sink, block), x, 60)
    with blockwise_attention(model):
        cache = quantized_cache(model.config, spec, window=window, sink=sink, block_size=block)
        got = run_steps(model, cache, x, 60)
    assert isinstance(cache, QuantizedHydraCache) and isinstance(cache.layers[0], QuantizedKVLayer)
    assert cache.get_seq_length() == 90
    with pytest.raises(KVCacheError, match="QuantizedHydraCache"):
        QuantizedKVCache(model.config, spec)
    assert (got - expected).abs().max().item() < 2e-4
    assert cache.parts()["gdn_state"] > 0 and cache.nbytes() == cache_nbytes(cache)


def test_specs_and_their_defaults():
    keys, values = parse_cache_spec("int4")
    assert (keys.options, values.options) == ({"axis": "channel"}, {"axis": "token"})
    assert canonical_spec("int4") == "int4-channel:int4-token"
    assert canonical_spec("tq4-qjl:fp8-head") == "tq4-qjl:fp8-head"
    assert canonical_spec(" tq4 : int4 ") == "tq4:int4-token"


@pytest.mark.parametrize("spec, message", [
    ("int5", "unknown KV format 'int5'"),
    ("int4-row", "no variant 'row'; it takes channel, token"),
    ("mxfp4-qjl", "has no variants"),
    ("tq4:int4:fp8", "NAME or KEYS:VALUES"),
    ("tq4:", "NAME or KEYS:VALUES"),
])
def test_bad_specs(spec, message):
    with pytest.raises(KVFormatError, match=message):
        KVCacheFactory(spec)


@pytest.mark.parametrize("kwargs, message", [
    ({"window": -1}, "window must be an integer >= 0"),
    ({"sink": 1.5}, "sink must be an integer >= 0"),
    ({"block_size": 0}, "block size must be an integer >= 32"),
    ({"block_size": 48}, "multiple of 32"),
    ({"window": True}, "window must be an integer"),
])
def test_sizes_that_make_no_sense(kwargs, message):
    with pytest.raises(KVCacheError, match=message):
        KVCacheFactory("tq4:int4", **kwargs)
    with pytest.raises(KVCacheError, match=message):
        QuantizedKVCache(tiny().config, "tq4:int4", **kwargs)


def test_a_head_dim_a_format_cannot_serve():
    config = tiny(head_dim=24).config
    with pytest.raises(KVFormatError, match="tq4 needs a power-of-two head_dim"):
        QuantizedKVCache(config, "tq4:int4")
    with pytest.raises(KVFormatError, match="mxfp4 needs head_dim divisible by 32, got 24"):
        QuantizedKVCache(config, "fp8:mxfp4")


def test_non_finite_keys_or_values_are_refused_with_the_layer_and_count():
    layer = QuantizedKVLayer(3, get_format("tq4", 32), get_format("int4", 32), window=4, sink=1, block_size=32)
    k, v = torch.randn(1, 2, 30, 32), torch.randn(1, 2, 30, 32)
    k[0, 1, 10, 3] = float("nan")
    k[0, 0, 12, :2] = float("inf")
    layer.update(k, v)  # still in the window: nothing is quantized yet
    with pytest.raises(KVCacheError, match=r"layer 3: 3 non-finite keys \(1 NaN, 2 inf\) in tokens 1\.\.32"):
        layer.update(k[:, :, :10], v[:, :, :10])


def test_the_cache_needs_the_blockwise_attention_and_cannot_be_cropped():
    model = tiny()
    cache = QuantizedKVCache(model.config, "tq4:int4", window=4, sink=0, block_size=32)
    with torch.no_grad(), pytest.raises(KVCacheError, match="another attention implementation"):
        model(ids(1, 8), past_key_values=cache, use_cache=True)
    with pytest.raises(KVCacheError, match="cannot be cropped"):
        cache.crop(-1)
    sliding = tiny(layer_types=["full_attention", "sliding_attention"], sliding_window=16, use_sliding_window=True)
    with pytest.raises(KVCacheError, match="full-attention layers only"):
        QuantizedKVCache(sliding.config, "fp8")


def test_error_figures():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 4, 16, 32, generator=g), torch.randn(1, 2, 96, 32, generator=g),
               torch.randn(1, 2, 96, 32, generator=g))
    same = attention_errors(q, k, v, k, v)
    assert same == {"attn_out_rel_err": 0.0, "top8_overlap": 1.0, "top32_overlap": 1.0}
    fmt = get_format("int4", 32)
    k_hat = fake_quantize(k, fmt, block_size=32)
    assert torch.equal(k_hat[:, :, 32:64], fmt.dequantize(fmt.quantize(k[:, :, 32:64])))
    assert 1e-4 < relative_mse(k, k_hat) < 0.02
    noisy = attention_errors(q, k, v, k_hat, fake_quantize(v, fmt, 32))
    assert 0 < noisy["attn_out_rel_err"] < 0.2 and 0.5 < noisy["top8_overlap"] < 1.0
    # a constructed case: the quantized keys swap the first query's two best keys for two others
    w_keys = torch.zeros(1, 1, 4, 2)
    w_keys[0, 0, :, 0] = torch.tensor([4.0, 3.0, 0.0, -1.0])
    swapped = w_keys.clone()
    swapped[0, 0, :, 0] = torch.tensor([0.0, -1.0, 4.0, 3.0])
    one_query = torch.tensor([[[[1.0, 0.0]]]])
    assert attention_errors(one_query, w_keys, w_keys, swapped, w_keys, ks=(2,))["top2_overlap"] == 0.0


def test_cli_eval_and_generate_take_a_kv_format(model_dir, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["eval", "--model", str(model_dir), "--tasks", "niah_single_1", "--lengths", "256", "--limit", "2",
                 "--kv-format", "tq4:int4", "--kv-window", "16", "--kv_sink", "2", "--output_path", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "kv cache: tq4:int4-token" in printed
    folder = next(out.iterdir())
    expected = {"kv_format": "tq4:int4-token", "window": 16, "sink": 2, "block_size": 64}
    assert json.loads((folder / "metrics.json").read_text())["config"]["kv_cache"] == expected
    assert json.loads((folder / "config.json").read_text())["kv_cache"] == expected
    assert main(["generate", "--model", str(model_dir), "--prompt", "VAR A = 1 " * 30, "--max_new_tokens", "4",
                 "--kv_format", "fp8", "--kv-window", "8"]) == 0
    assert "kv cache fp8:fp8 (sink 4, window 8, block 64)" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--tasks", "niah_single_1", "--kv-format", "tq4:int9"]) == 2
    assert "unknown KV format 'int9'" in capsys.readouterr().err
    assert main(["generate", "--model", str(model_dir), "--prompt", "x", "--kv-format", "fp8", "--kv-window",
                 "-3"]) == 2
    assert "window must be an integer >= 0" in capsys.readouterr().err
