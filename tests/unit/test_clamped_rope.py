"""ReRoPE FA heads (fa_position "rope_clamped"): the blocked attention against a per-pair oracle, against plain
RoPE inside the window, and inside a hybrid (cached decode = full forward; what it refuses)."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from hydrahead.attention import HybridOptions
from hydrahead.attention.clamped_rope import clamped_rope_attention, rotate
from hydrahead.cache import HydraCache
from hydrahead.convert import convert
from hydrahead.errors import HydraheadError
from hydrahead.plan import HeadPlan

D = 16


def rotary():
    config = Qwen3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=D,
                         max_position_embeddings=64)
    return LlamaRotaryEmbedding(config=config)


def oracle(q, k, v, rope, window, valid=None):
    """Every pair scored with RoPE at distance min(i - j, window), one pair at a time."""
    B, Hq, Tq, _ = q.shape
    Tk, g = k.shape[2], Hq // k.shape[1]
    cos, sin = (x[0] for x in rope(q.float(), torch.arange(Tk + window + 1)[None]))
    out = torch.zeros(B, Tq, Hq, D)
    for b in range(B):
        for h in range(Hq):
            for t in range(Tq):
                i = Tk - Tq + t
                scores = torch.full((Tk,), float("-inf"))
                for j in range(i + 1):
                    if valid is None or valid[b, j]:
                        d = min(i - j, window)
                        scores[j] = rotate(q[b, h, t], cos[d], sin[d]) @ k[b, h // g, j] * D**-0.5
                out[b, t, h] = torch.softmax(scores, 0) @ v[b, h // g] if torch.isfinite(scores).any() else 0
    return out


@pytest.mark.parametrize("tq, tk", [(11, 11), (1, 11), (4, 11)])
def test_matches_the_per_pair_oracle(tq, tk):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, t, D, generator=g) for h, t in ((4, tq), (2, tk), (2, tk)))
    got = clamped_rope_attention(q, k, v, rotary(), window=3, mask=None, scaling=D**-0.5, query_block=2)
    torch.testing.assert_close(got, oracle(q, k, v, rotary(), 3), atol=1e-5, rtol=1e-4)


def test_a_padding_mask_is_applied():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 9, D, generator=g) for _ in range(3))
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, :3] = False  # left padding of the second row
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    mask = (causal[None] & valid[:, None, :])[:, None]  # [B, 1, Tq, Tk]
    got = clamped_rope_attention(q, k, v, rotary(), window=4, mask=mask, scaling=D**-0.5)
    want = oracle(q, k, v, rotary(), 4, valid)
    # the padded queries see nothing: zeros, and every other row as the oracle
    assert torch.equal(got[1, :3], torch.zeros_like(got[1, :3]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_inside_the_window_it_is_plain_rope():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 12, D, generator=g) for _ in range(3))
    rope = rotary()
    cos, sin = (x[0] for x in rope(q, torch.arange(12)[None]))
    plain = torch.nn.functional.scaled_dot_product_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, is_causal=True)
    got = clamped_rope_attention(q, k, v, rope, window=12, mask=None, scaling=D**-0.5)
    torch.testing.assert_close(got, plain.transpose(1, 2), atol=1e-5, rtol=1e-4)


def tiny_hybrid(seed=0):
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=D, max_position_embeddings=64, attn_implementation="sdpa")
    model = Qwen3ForCausalLM(config).eval()
    plan = HeadPlan.from_config(config, [[0], [1, 2]], "query")
    return convert(model, plan, HybridOptions(fa_position="rope_clamped", logscale_length=8), inplace=True).eval()


def test_cached_decode_equals_the_full_forward_past_the_window():
    model = tiny_hybrid()
    x = torch.randint(1, 97, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(x).logits
        cache = HydraCache(model.config)
        steps = [model(x[:, :20], past_key_values=cache, use_cache=True).logits]
        for t in range(20, 30):
            steps.append(model(x[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_unsupported_decodes_are_refused_by_name():
    from hydrahead.decoding import plan_decoding

    model = tiny_hybrid()
    x = torch.randint(1, 97, (1, 12))
    quantized = model.head_plan.with_kv_formats("fp8", window=0, sink=0)
    with torch.no_grad(), pytest.raises(HydraheadError, match="rope_clamped.*plain cache"):
        with plan_decoding(model, quantized) as run:
            model.generate(x, max_new_tokens=2, do_sample=False, **run.cache_kwargs(model))


def test_gradients_match_the_oracle():
    """Training runs through the blocked form: its gradients are the per-pair oracle's."""
    g = torch.Generator().manual_seed(4)
    leaves = [torch.randn(1, h, 7, D, generator=g, requires_grad=True) for h in (2, 1, 1)]
    weight = torch.randn(1, 7, 2, D, generator=g)
    got = torch.autograd.grad((clamped_rope_attention(*leaves, rotary(), 2, None, D**-0.5, 3) * weight).sum(), leaves)
    want = torch.autograd.grad((oracle(*leaves, rotary(), 2) * weight).sum(), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
