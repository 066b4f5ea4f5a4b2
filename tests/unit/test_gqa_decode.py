"""The decode-step attention over tensors (gqa_decode.py) against sdpa with the KV heads repeated, and where
it is used: hydrahead's attention and the hybrid FA branch under sdpa."""

import pytest
import torch
import torch.nn.functional as F

from hydrahead.attention.gqa_decode import CHUNK, gqa_decode_attention, use_for


def reference(q, k, v, mask, scaling):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1).float(), v.repeat_interleave(g, 1).float()
    if mask is None:
        T, Q = k.shape[2], q.shape[2]
        mask = torch.ones(Q, T, dtype=torch.bool).tril(T - Q)
    out = F.scaled_dot_product_attention(q.float(), k, v, attn_mask=mask, scale=scaling)
    return torch.nan_to_num(out, nan=0.0).transpose(1, 2)


@pytest.mark.parametrize("g, q_len", [(1, 1), (2, 1), (4, 2), (2, 3)])
@pytest.mark.parametrize("masking", ["none", "bool", "additive"])
def test_equals_sdpa_with_repeated_kv_heads(g, q_len, masking):
    gen = torch.Generator().manual_seed(g * 10 + q_len)
    B, Hk, T, D = 2, 2, CHUNK + 37, 16  # more than one p.v chunk
    q = torch.randn(B, Hk * g, q_len, D, generator=gen)
    k, v = torch.randn(B, Hk, T, D, generator=gen), torch.randn(B, Hk, T, D, generator=gen)
    mask = None
    if masking != "none":
        valid = torch.ones(B, T, dtype=torch.bool)
        valid[1, :100] = False  # left padding
        causal = torch.ones(q_len, T, dtype=torch.bool).tril(T - q_len)
        mask = (causal[None] & valid[:, None])[:, None]  # [B, 1, Q, T]
        if masking == "additive":
            mask = torch.where(mask, 0.0, torch.finfo(torch.float32).min)
    got = gqa_decode_attention(q, k, v, mask, D**-0.5)
    torch.testing.assert_close(got, reference(q, k, v, mask, D**-0.5), atol=2e-6, rtol=1e-5)


def test_bf16_inputs_give_bf16_close_to_float32():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, h, t, 32, generator=gen) for h, t in ((8, 1), (2, 300), (2, 300)))
    got = gqa_decode_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), None, 32**-0.5)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), reference(q, k, v, None, 32**-0.5), atol=2e-2, rtol=2e-2)


def test_a_query_that_may_see_nothing_gives_zeros():
    q, k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    assert torch.equal(gqa_decode_attention(q, k, v, torch.zeros(1, 1, 1, 5, dtype=torch.bool), 1.0),
                       torch.zeros(1, 1, 2, 8))


def test_only_decode_steps_without_other_arguments_are_served():
    q, k = torch.randn(1, 8, 1, 16), torch.randn(1, 2, 50, 16)
    assert use_for(q, k) and use_for(q, k, 0.0, {"sliding_window": None, "is_causal": True, "position_ids": None})
    assert not use_for(torch.randn(1, 8, 3, 16), k)  # 12 rows per KV head: a prefill chunk, sdpa's job
    assert not use_for(q, k, dropout=0.1)
    assert not use_for(q, k, 0.0, {"sliding_window": 16})
    assert not use_for(q, k, 0.0, {"softcap": 30.0})  # unknown to this function: left to sdpa


def test_the_hybrid_fa_branch_and_hydrahead_attention_use_it(monkeypatch):
    """A cached decode step of a hybrid (sdpa) and of a plain model under hydrahead's attention go through it,
    and give what a full forward gives."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from hydrahead.attention import HybridOptions, gqa_decode
    from hydrahead.cache import HydraCache, KVCache
    from hydrahead.compat import cache_arg
    from hydrahead.convert import convert
    from hydrahead.kv import use_blockwise_attention
    from hydrahead.plan import HeadPlan

    calls = []
    real = gqa_decode.gqa_decode_attention
    monkeypatch.setattr(gqa_decode, "gqa_decode_attention", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, attn_implementation="sdpa")
    plain = Qwen3ForCausalLM(config).eval()
    hybrid = convert(plain, HeadPlan.from_config(config, [[0, 1], [2]], "query"), HybridOptions(logscale_length=8))
    use_blockwise_attention(plain)
    x = torch.randint(1, 97, (2, 12))
    for model, cache in ((hybrid, HydraCache(hybrid.config)), (plain, KVCache(plain.config))):
        calls.clear()
        with torch.no_grad():
            full = model(x).logits[:, -1]
            model(x[:, :-1], use_cache=True, **cache_arg(cache))
            last = model(x[:, -1:], use_cache=True, **cache_arg(cache)).logits[:, -1]
        assert len(calls) == 2  # one per layer, at the decode step only
        torch.testing.assert_close(last, full, atol=1e-4, rtol=1e-4)
