"""The native kernels for tensors in the model's dtype (hydrahead.kv.native.dense): decode attention against the
plain-PyTorch decode attention (itself held to sdpa in test_gqa_decode.py) and the products against
torch.nn.functional.linear; DecodeLinear in hydrahead's models; calls the kernels do not take go to PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hydrahead.attention import HybridOptions, gqa_decode
from hydrahead.convert import convert
from hydrahead.decode_linear import DecodeLinear, use_decode_linear
from hydrahead.kv import native
from hydrahead.kv.native import dense
from tests.unit.test_hybrid import mixed_plan, tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True)
def every_weight_native(monkeypatch):
    """Small weights go to torch by default (dense.MIN_WEIGHT_ELEMENTS); the tests here hold the kernel to it."""
    monkeypatch.setattr(dense, "MIN_WEIGHT_ELEMENTS", 0)


def need_kernel():
    ok, why = native.available()
    if not ok:
        pytest.skip(f"the native kernel cannot be built here: {why}")


def reference_attention(monkeypatch, query, key, value, mask=None):
    """The decode attention with the kernel off: PyTorch's float32 path."""
    with monkeypatch.context() as m:
        m.setenv(native.ENV, "0")
        return gqa_decode.gqa_decode_attention(query, key, value, mask, query.shape[-1] ** -0.5)


def served(monkeypatch, name: str) -> list:
    """A list that gets an entry each time `dense.<name>` serves a call (returns an output, not None)."""
    calls = []
    real = getattr(dense, name)

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        if out is not None:
            calls.append(1)
        return out

    monkeypatch.setattr(dense, name, counted)
    return calls


def cache_of(B, Hk, T, D, dtype, seed, extra=0):
    """Keys and values as a preallocated cache holds them: the first T tokens of a longer buffer."""
    g = torch.Generator().manual_seed(seed)
    k = (torch.randn(B, Hk, T + extra, D, generator=g) * 2 + torch.randn(D, generator=g)).to(dtype)
    v = torch.randn(B, Hk, T + extra, D, generator=g).to(dtype)
    return k[:, :, :T], v[:, :, :T]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,Hq,Hk,D,T,extra", [
    (1, 16, 8, 128, 1030, 64),  # the Qwen3-0.6B shape, read from a longer buffer; T not a multiple of 4
    (2, 4, 2, 32, 97, 0),  # the teacher's head_dim: one 32-channel step of the bfloat16 dot product
    (1, 8, 1, 64, 5, 3),  # 8 query rows per KV head, a handful of keys
    (2, 3, 3, 256, 300, 0),  # MHA, the largest head the kernel takes
])
def test_the_attention_kernel_equals_the_pytorch_decode_attention(monkeypatch, dtype, B, Hq, Hk, D, T, extra):
    need_kernel()
    k, v = cache_of(B, Hk, T, D, dtype, seed=T, extra=extra)
    query = torch.randn(B, Hq, 1, D, generator=torch.Generator().manual_seed(1)).to(dtype)
    want = reference_attention(monkeypatch, query, k, v)
    calls = served(monkeypatch, "attention")
    got = gqa_decode.gqa_decode_attention(query, k, v, None, D**-0.5)
    assert calls and got.dtype == dtype and got.shape == want.shape == (B, 1, Hq, D)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bfloat16: the output's own rounding
    torch.testing.assert_close(got.float(), want.float(), atol=tolerance, rtol=tolerance)


def test_a_mask_that_hides_keys_goes_to_pytorch_and_one_that_hides_none_to_the_kernel(monkeypatch):
    need_kernel()
    k, v = cache_of(1, 2, 40, 32, torch.float32, seed=0)
    query = torch.randn(1, 4, 1, 32)
    calls = served(monkeypatch, "attention")
    every = torch.ones(1, 1, 1, 40, dtype=torch.bool)
    torch.testing.assert_close(gqa_decode.gqa_decode_attention(query, k, v, every, 32**-0.5),
                               reference_attention(monkeypatch, query, k, v), atol=1e-5, rtol=1e-5)
    assert len(calls) == 1
    padded = every.clone()
    padded[..., :7] = False
    got = gqa_decode.gqa_decode_attention(query, k, v, padded, 32**-0.5)
    assert len(calls) == 1  # not the kernel: it has no mask
    torch.testing.assert_close(got, reference_attention(monkeypatch, query, k[:, :, 7:], v[:, :, 7:]), atol=1e-5,
                               rtol=1e-5)


def test_calls_the_attention_kernel_does_not_take_return_none():
    need_kernel()
    k, v = cache_of(1, 2, 16, 32, torch.float32, seed=0)
    assert dense.attention(torch.randn(1, 2, 9, 32), k, v, 1.0) is None  # more than MAX_ROWS rows per KV head
    assert dense.attention(torch.randn(1, 2, 2, 32), k.half(), v.half(), 1.0) is None  # float16 cache
    assert dense.attention(torch.randn(1, 2, 2, 32), k.mT.contiguous().mT, v, 1.0) is None  # channels strided
    big = torch.randn(1, 1, 4, 512)
    assert dense.attention(torch.randn(1, 1, 1, 512), big, big, 1.0) is None  # head_dim above 256


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,N,K,bias", [
    (1, 1030, 1024, False),  # N not a multiple of 4
    (3, 64, 96, True),  # K a multiple of 32, with a bias
    (8, 7, 40, False),  # K not a multiple of 32: bfloat16 widened by a shift everywhere
])
def test_the_product_kernel_equals_linear(dtype, rows, N, K, bias):
    need_kernel()
    g = torch.Generator().manual_seed(N)
    weight = torch.randn(N, K, generator=g).to(dtype)
    b = torch.randn(N, generator=g).to(dtype) if bias else None
    x = torch.randn(rows, 1, K, generator=g).to(dtype)
    got = dense.linear(x, weight, b)
    want = F.linear(x.float(), weight.float(), None if b is None else b.float())
    assert got is not None and got.dtype == dtype and got.shape == (rows, 1, N)
    # bfloat16: the output rounded once from float32 sums (about 2^-8 relative), as torch's own bf16 linear
    tolerance = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(got.float(), want, atol=tolerance * want.abs().max().item(), rtol=tolerance)


def test_calls_the_product_kernel_does_not_take_return_none(monkeypatch):
    need_kernel()
    weight = torch.randn(16, 32)
    with monkeypatch.context() as m:
        m.setattr(dense, "MIN_WEIGHT_ELEMENTS", 1 << 20)
        assert dense.linear(torch.randn(1, 32), weight) is None  # a small weight: torch is faster
    assert dense.linear(torch.randn(9, 32), weight) is None  # more than MAX_ROWS rows: a prefill
    assert dense.linear(torch.randn(1, 32).half(), weight.half()) is None
    assert dense.linear(torch.randn(1, 32).bfloat16(), weight) is None  # x and weight differ in dtype
    assert dense.linear(torch.randn(1, 32), weight.mT.contiguous().mT) is None  # weight not contiguous
    assert dense.linear(torch.randn(1, 32, requires_grad=True), weight) is None  # autograd needs the product
    with torch.no_grad():
        assert dense.linear(torch.randn(1, 32, requires_grad=True), weight) is not None


def test_a_product_split_over_threads_equals_one_thread(monkeypatch):
    need_kernel()
    weight, x = torch.randn(4099, 256), torch.randn(2, 256)
    one = dense.linear(x, weight)
    monkeypatch.setattr(native, "_pool", None)
    monkeypatch.setattr(native, "_pool_size", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    split = dense.linear(x, weight)
    assert native._pool_size == 3 and torch.equal(one, split)  # each row is computed alike, wherever it runs


def test_decode_linear_is_linear_and_trains_through_pytorch():
    need_kernel()
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 8, bias=False))
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 8, bias=False))
    model.load_state_dict(plain.state_dict())
    assert use_decode_linear(model) == 2 and all(isinstance(m, DecodeLinear) for m in (model[0], model[2]))
    assert model.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(1, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), atol=1e-5, rtol=1e-5)
    model(torch.randn(4, 32)).sum().backward()  # with autograd: nn.Linear's forward, gradients as usual
    assert model[0].weight.grad is not None and model[2].weight.grad.abs().sum() > 0


def test_hydrahead_models_use_decode_linear_everywhere(monkeypatch):
    need_kernel()
    original = tiny(seed=3)
    hybrid = convert(original, mixed_plan(original), HybridOptions(logscale_length=16))
    plain = [name for name, m in hybrid.named_modules() if type(m) is nn.Linear]
    assert not plain and any(isinstance(m, DecodeLinear) for m in hybrid.modules())
    assert not any(isinstance(m, DecodeLinear) for m in original.modules())  # the original is left as it was
    calls = served(monkeypatch, "linear")
    with torch.no_grad():
        hybrid(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]))  # a prefill: PyTorch
        assert not calls
        hybrid(torch.tensor([[1]]))  # one row: the kernel
        assert calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_reads_selected_tokens_in_place_as_the_gathered_copy_does(monkeypatch, dtype):
    """Sparse decoding's sparse heads: chosen KV heads, each at its own tokens, some hidden."""
    need_kernel()
    from hydrahead.decoding.attention import gathered_attend

    B, Hk, N, D, g, k = 2, 4, 300, 64, 2, 37
    key, value = cache_of(B, Hk, N, D, dtype, seed=5, extra=11)
    gen = torch.Generator().manual_seed(6)
    heads = torch.tensor([3, 1])
    index = torch.randint(0, N, (B, 2, k), generator=gen)
    keep = torch.rand(B, 2, k, generator=gen) > 0.2
    q = torch.randn(B, 2, g, D, generator=gen).to(dtype)
    calls = served(monkeypatch, "attention")
    got = gathered_attend(q, key, value, heads, index, keep, D**-0.5)
    assert calls
    with monkeypatch.context() as m:
        m.setenv(native.ENV, "0")
        want = gathered_attend(q, key, value, heads, index, keep, D**-0.5)  # index_select, then matmuls
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("masked", [False, True])
def test_retrieval_heads_get_the_kernels_scores_and_probabilities(monkeypatch, masked):
    """Sparse decoding's retrieval heads need every token's score and probability beside the output."""
    need_kernel()
    from hydrahead.decoding.attention import dense_attend

    B, R, N, D, g = 2, 3, 130, 32, 2
    key, value = cache_of(B, R, N, D, torch.float32, seed=7, extra=5)
    q = torch.randn(B, R, g, D, generator=torch.Generator().manual_seed(8))
    valid = None
    if masked:  # padding on the left of the second sequence
        valid = torch.ones(B, N, dtype=torch.bool)
        valid[1, :9] = False
    calls = served(monkeypatch, "attention")
    got = dense_attend(q, key, value, valid, D**-0.5)
    assert calls
    with monkeypatch.context() as m:
        m.setenv(native.ENV, "0")
        want = dense_attend(q, key, value, valid, D**-0.5)
    for a, b in zip(got, want):  # out, scores (-inf where hidden), probabilities
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_static_caches_unfilled_slots_still_go_to_the_kernel(monkeypatch):
    need_kernel()
    k, v = cache_of(1, 2, 64, 32, torch.float32, seed=9)
    query = torch.randn(1, 4, 1, 32)
    filled = torch.zeros(1, 1, 1, 64, dtype=torch.bool)
    filled[..., :50] = True  # a StaticCache of 64 slots holding 50 tokens
    calls = served(monkeypatch, "attention")
    got = gqa_decode.gqa_decode_attention(query, k, v, filled, 32**-0.5)
    assert calls
    torch.testing.assert_close(got, reference_attention(monkeypatch, query, k[:, :, :50], v[:, :, :50]), atol=1e-5,
                               rtol=1e-5)


def test_an_index_out_of_range_is_refused_before_the_kernel_reads_it():
    need_kernel()
    k, v = cache_of(1, 2, 16, 32, torch.float32, seed=0)
    with pytest.raises(ValueError, match="out of range"):
        dense.attention(torch.randn(1, 2, 1, 32), k, v, 1.0, index=torch.tensor([[[0, 16]], [[1, 2]]]).view(1, 2, 2))


@pytest.mark.parametrize("name,scale", [("bf16", None), ("fp8", "tensor"), ("fp8", "head"), ("fp8", "none")])
@pytest.mark.parametrize("masked", [False, True])
def test_the_chunk_kernel_equals_the_chunk_function_for_bf16_and_fp8(name, scale, masked):
    """The quantized cache's formats that store plain numbers: one online-softmax chunk against the reference."""
    need_kernel()
    from hydrahead.kv import get_format
    from tests.unit.test_kv_native import check_chunk

    check_chunk(get_format(name, 64) if scale is None else get_format(name, 64, scale=scale), 2, masked, seed=3, H=3,
                t=70)


@pytest.mark.parametrize("spec", ["bf16", "fp8"])
def test_attention_over_a_bf16_or_fp8_cache_with_the_kernel_equals_the_reference(monkeypatch, spec):
    need_kernel()
    from hydrahead.kv import get_format
    from tests.unit.test_kv_native import check_view_attention, decode_view

    view = decode_view(300, key_format=get_format(spec, 64), value_format=get_format(spec, 64), seed=4)
    check_view_attention(view, served(monkeypatch, "chunk"))
