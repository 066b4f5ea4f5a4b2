"""The native int4 decode kernel (hydrahead.kv.native) against the plain-PyTorch chunk function it replaces, and
attention over a quantized cache with it against the reference loop; without a compiler, the reference serves."""

from __future__ import annotations

import logging

import pytest
import torch

from hydrahead.kv import QTensor, QuantizedKVLayer, TQ4Format, fused, get_format, native
from hydrahead.kv.attention import online_softmax_attention
from hydrahead.kv.int4 import Int4Format

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def need_kernel():
    ok, why = native.available()
    if not ok:
        pytest.skip(f"the native kernel cannot be built here: {why}")


def chunk_inputs(B, H, R, D, T, key_group, value_group, seed=0, sliced=False):
    """Query, keys and values of one chunk and an online-softmax state part-way through. key_group None: tq4 keys."""
    g = torch.Generator().manual_seed(seed)
    kf = TQ4Format(D) if key_group is None else Int4Format(D, "channel", key_group)
    vf = Int4Format(D, "token", value_group)
    extra = 64 if sliced else 0  # a range read from a longer buffer: strided over heads, contiguous within
    keys = kf.quantize(torch.randn(B, H, T + extra, D, generator=g) * 2 + torch.randn(D, generator=g) * 4)
    values = vf.quantize(torch.randn(B, H, T + extra, D, generator=g))
    if sliced:
        per_group = 1 if key_group is None else key_group
        keys = QTensor(keys.format, (B, H, T, D), keys.dtype, keys.payload[:, :, :T],
                       {n: t[:, :, : T // per_group] for n, t in keys.scales.items()})
        values = QTensor(values.format, (B, H, T, D), values.dtype, values.payload[:, :, :T],
                         {n: t[:, :, :T] for n, t in values.scales.items()})
    q = torch.randn(B, H, R, D, generator=g) * D**-0.5
    m = torch.randn(B, H, R, 1, generator=g)
    m[-1, 0, -1] = float("-inf")  # a row that has seen no visible key yet
    l = torch.rand(B, H, R, 1, generator=g) * torch.isfinite(m)
    acc = torch.randn(B, H, R, D, generator=g) * torch.isfinite(m)
    return q, keys, values, m, l, acc, kf, vf


def reference(q, keys, values, bias, m, l, acc, kf, vf):
    return fused.chunk_step(kf.key_query(q), keys.payload, keys.scales, values.payload, values.scales, bias, m, l,
                            acc, kf, vf)


@pytest.mark.parametrize("B,H,R,D,T,key_group,value_group", [
    (1, 8, 2, 128, 256, 32, 32),  # the Qwen3-0.6B shape
    (2, 2, 4, 32, 96, 32, 32),  # the teacher's head_dim, one value group per token
    (1, 3, 1, 64, 128, 64, 16),
    (2, 1, 8, 256, 64, 32, 8),
    (1, 8, 2, 128, 256, None, 32),  # tq4 keys
    (2, 2, 3, 32, 64, None, 16),
])
@pytest.mark.parametrize("masked", [False, True])
def test_the_kernel_equals_the_chunk_function(B, H, R, D, T, key_group, value_group, masked):
    need_kernel()
    q, keys, values, m, l, acc, kf, vf = chunk_inputs(B, H, R, D, T, key_group, value_group, sliced=B == 1)
    bias = None
    if masked:
        bias = torch.zeros(B, 1, R, T)
        bias[:, :, :, : T // 3] = float("-inf")  # padding, shared by the heads (broadcast over dim 1)
        bias[-1, :, -1] = float("-inf")  # a row that sees nothing in this chunk
    expected = reference(q, keys, values, bias, m, l, acc, kf, vf)
    got = native.chunk(q, keys, values, bias, m, l, acc, kf, vf)
    for name, e, o in zip(("m", "l", "acc"), expected, got):
        assert torch.equal(torch.isinf(e), torch.isinf(o)), name
        assert torch.allclose(o, e, atol=1e-4, rtol=1e-4, equal_nan=False), (name, (o - e).abs().max())
    assert torch.isinf(got[0][-1, 0, -1]) == masked  # an empty row stays empty while the chunk hides every key


def test_a_call_split_over_threads_equals_one_thread(monkeypatch):
    need_kernel()
    inputs = chunk_inputs(2, 4, 2, 64, 2048, 32, 32)
    one = native.chunk(*inputs[:3], None, *inputs[3:])
    monkeypatch.setattr(native, "_pool", None)
    monkeypatch.setattr(native, "_pool_size", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # 8 heads x 2048 tokens: split in 3
    split = native.chunk(*inputs[:3], None, *inputs[3:])
    assert native._pool_size == 3
    assert all(torch.equal(a, b) for a, b in zip(one, split))  # each head is computed alike, wherever it runs


def test_the_kernel_does_not_touch_its_inputs():
    need_kernel()
    q, keys, values, m, l, acc, kf, vf = chunk_inputs(1, 2, 2, 64, 64, 32, 32)
    before = [t.clone() for t in (q, m, l, acc)]
    native.chunk(q, keys, values, None, m, l, acc, kf, vf)
    assert all(torch.equal(a, b) for a, b in zip(before, (q, m, l, acc)))


def test_layouts_it_does_not_take_return_none():
    need_kernel()
    q, keys, values, m, l, acc, kf, vf = chunk_inputs(1, 2, 2, 64, 64, 32, 32)
    strided = QTensor(keys.format, keys.shape, keys.dtype, keys.payload.transpose(-1, -2).contiguous().mT, keys.scales)
    assert native.chunk(q, strided, values, None, m, l, acc, kf, vf) is None
    assert not native.takes(kf, Int4Format(64, "channel"), 2, q.device)  # values grouped per channel
    assert not native.takes(get_format("mxfp4", 64), vf, 2, q.device)
    assert not native.takes(TQ4Format(64, qjl=True), vf, 2, q.device)
    assert not native.takes(kf, vf, native.MAX_ROWS + 1, q.device)


def decode_view(tokens, D=64, heads=2, keys="int4", key_format=None, value_format=None, seed=1):
    """A quantized layer's view at a decode step: sink, blocks of 32 tokens, recent window. By default int4 values
    with int4 (`keys="int4"`) or tq4 keys; `key_format` / `value_format` for others."""
    g = torch.Generator().manual_seed(seed)
    key_format = key_format or (Int4Format(D, "channel") if keys == "int4" else TQ4Format(D))
    layer = QuantizedKVLayer(0, key_format, value_format or Int4Format(D, "token"), window=16, sink=2, block_size=32)
    k = torch.randn(2, heads, tokens, D, generator=g)
    v = torch.randn(2, heads, tokens, D, generator=g)
    layer.update(k[:, :, :-1], v[:, :, :-1])
    return layer.update(k[:, :, -1:], v[:, :, -1:])[0]


def check_view_attention(view, served: list, seed=2):
    """Attention over `view` by default (for two sequences, the second left-padded into the stored blocks) equals the
    reference, and `served` (a list a patched kernel entry point appends to) shows the kernel took it."""
    query = torch.randn(2, 4, 1, view.key_format.head_dim, generator=torch.Generator().manual_seed(seed)) * 3
    mask = torch.ones(2, 1, 1, view.num_tokens, dtype=torch.bool)
    mask[1, :, :, :40] = False
    got = online_softmax_attention(query, view, mask, 0.125)
    assert served
    torch.testing.assert_close(got, online_softmax_attention(query, view, mask, 0.125, fast=False), atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("keys", ["int4", "tq4"])
def test_attention_over_a_cache_with_the_kernel_equals_the_reference(keys):
    need_kernel()
    view = decode_view(300, keys=keys)
    g = torch.Generator().manual_seed(2)
    query = torch.randn(2, 4, 1, 64, generator=g) * 3
    mask = torch.ones(2, 1, 1, view.num_tokens, dtype=torch.bool)
    mask[1, :, :, :40] = False  # left padding reaching into the quantized blocks
    expected = online_softmax_attention(query, view, mask, 0.125, fast=False)
    got = online_softmax_attention(query, view, mask, 0.125)  # the default: the kernel takes int4
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    heads = view.index_select(1, torch.tensor([1, 1, 0]))  # a hybrid's gathered heads
    assert torch.allclose(online_softmax_attention(query[:, :3], heads, None, 0.125),
                          online_softmax_attention(query[:, :3], heads, None, 0.125, fast=False), atol=1e-5, rtol=1e-5)


def test_the_kernel_serves_the_default_path(monkeypatch):
    need_kernel()
    calls = []
    real = native.chunk
    monkeypatch.setattr(native, "chunk", lambda *a: calls.append(1) or real(*a))
    view = decode_view(200)
    online_softmax_attention(torch.randn(2, 4, 1, 64), view, None, 0.125)
    assert calls
    calls.clear()
    monkeypatch.setenv(native.ENV, "0")
    online_softmax_attention(torch.randn(2, 4, 1, 64), view, None, 0.125)
    assert not calls


def test_without_a_compiler_the_reference_serves_and_says_why(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_failure", None)
    monkeypatch.setattr(native, "_compiler", lambda: None)
    monkeypatch.setenv("HYDRAHEAD_CACHE_DIR", str(tmp_path))
    view = decode_view(200)
    query = torch.randn(2, 4, 1, 64)
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        got = online_softmax_attention(query, view, None, 0.125)
        online_softmax_attention(query, view, None, 0.125)
    assert torch.equal(got, online_softmax_attention(query, view, None, 0.125, fast=False))
    ok, why = native.available()
    assert not ok and "no C compiler" in why
    assert len([r for r in caplog.records if r.name == native.__name__]) == 1  # said once


def test_a_build_leaves_one_library_and_no_temporary_file(monkeypatch, tmp_path):
    if native._compiler() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("HYDRAHEAD_CACHE_DIR", str(tmp_path))
    library = native._build()
    built = list((tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so" and library.hh_int4_chunk is not None


@pytest.mark.parametrize("key_group", [32, None])  # int4 keys, tq4 keys
def test_the_scoring_and_value_halves_equal_the_formats(key_group):
    need_kernel()
    q, keys, values, _, _, _, kf, vf = chunk_inputs(2, 3, 4, 64, 128, key_group, 32, sliced=True)
    expected = kf.key_query(q) @ kf.score_keys(keys).mT
    assert torch.allclose(native.scores(q, keys, kf), expected, atol=1e-4, rtol=1e-4)
    p = torch.softmax(torch.randn(2, 3, 4, 128), dim=-1)
    assert torch.allclose(native.weighted_values(p, values, vf), p @ vf.dequantize(values), atol=1e-5, rtol=1e-4)
    assert native.scores(q, keys, get_format("mxfp4", 64)) is None
    assert native.weighted_values(p, values, get_format("nvfp4", 64)) is None


@pytest.mark.parametrize("keys", ["int4", "tq4"])
def test_sparse_decodings_dense_read_with_the_kernel_equals_it_without(keys, monkeypatch):
    from hydrahead.kv.read import attend_with_scores

    need_kernel()
    view = decode_view(300, keys=keys)
    q = torch.randn(2, 2, 2, 64)
    valid = torch.ones(2, view.num_tokens, dtype=torch.bool)
    valid[1, :40] = False
    fast = attend_with_scores(view, q, valid, 0.125)
    monkeypatch.setenv(native.ENV, "0")
    slow = attend_with_scores(view, q, valid, 0.125)
    for a, b in zip(fast, slow):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("D,R", [(128, 2), (64, 3), (32, 8)])
@pytest.mark.parametrize("masked", [False, True])
def test_the_kernel_equals_the_chunk_function_for_fp4(name, D, R, masked):
    """E2M1 codes with a scale per token per group of channels (UE8M0 per 32, or E4M3 per 16 times a tensor scale)."""
    need_kernel()
    check_chunk(get_format(name, D), R, masked, seed=D + R)


def check_chunk(fmt, R: int, masked: bool, seed: int, B: int = 2, H: int = 2, t: int = 77):
    """One chunk with keys and values in `fmt` (both): the native kernel takes it and equals the chunk function, from
    an online-softmax state part-way through (one row still empty), with or without a mask."""
    D = fmt.head_dim
    g = torch.Generator().manual_seed(seed)
    keys = fmt.quantize(torch.randn(B, H, t, D, generator=g) * 2 + torch.randn(D, generator=g) * 3)
    values = fmt.quantize(torch.randn(B, H, t, D, generator=g))
    q = torch.randn(B, H, R, D, generator=g) * D**-0.5
    m = torch.randn(B, H, R, 1, generator=g)
    m[-1, 0, -1] = float("-inf")
    l = torch.rand(B, H, R, 1, generator=g) * torch.isfinite(m)
    acc = torch.randn(B, H, R, D, generator=g) * torch.isfinite(m)
    bias = None
    if masked:
        bias = torch.zeros(B, 1, 1, t)
        bias[0, ..., :11] = float("-inf")
    assert native.takes(fmt, fmt, R, q.device)
    got = native.chunk(q, keys, values, bias, m, l, acc, fmt, fmt)
    want = reference(q, keys, values, bias, m, l, acc, fmt, fmt)
    assert got is not None
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4"])
def test_attention_over_an_fp4_cache_with_the_kernel_equals_the_reference(monkeypatch, name):
    need_kernel()
    view = decode_view(300, key_format=get_format(name, 64), value_format=get_format(name, 64), seed=5)
    calls = []
    real = native._grouped_chunk
    monkeypatch.setattr(native, "_grouped_chunk", lambda *a: calls.append(1) or real(*a))
    check_view_attention(view, calls)


def test_the_plain_c_paths_equal_the_references_too(monkeypatch, tmp_path):
    """Built without AVX-512 (as on a CPU without it), every kernel takes its plain loops: they must agree as well."""
    if native._compiler() is None or "avx512f" not in native._cpu_key():
        pytest.skip("needs a C compiler and a CPU whose AVX-512 paths the default build takes")
    import torch.nn.functional as F

    from hydrahead.kv.native import dense

    monkeypatch.setenv("HYDRAHEAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "FLAGS", native.FLAGS + ("-mno-avx512f",))
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_failure", None)
    monkeypatch.setattr(dense, "MIN_WEIGHT_ELEMENTS", 0)
    assert native.available()[0] and not dense.bf16_dot_product()
    for key_group in (32, None):  # int4 and tq4 keys
        inputs = chunk_inputs(1, 2, 2, 128, 96, key_group, 32)
        for a, b in zip(native.chunk(*inputs[:3], None, *inputs[3:]), reference(*inputs[:3], None, *inputs[3:])):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    fmt = get_format("nvfp4", 64)
    q, _, _, m, l, acc, _, _ = chunk_inputs(1, 2, 2, 64, 40, 32, 32)
    keys, values = fmt.quantize(torch.randn(1, 2, 40, 64)), fmt.quantize(torch.randn(1, 2, 40, 64))
    for a, b in zip(native.chunk(q, keys, values, None, m, l, acc, fmt, fmt),
                    reference(q, keys, values, None, m, l, acc, fmt, fmt)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for dtype in (torch.float32, torch.bfloat16):
        weight, x = torch.randn(70, 96).to(dtype), torch.randn(2, 96).to(dtype)
        torch.testing.assert_close(dense.linear(x, weight).float(), F.linear(x.float(), weight.float()), atol=2e-2,
                                   rtol=1e-2)
        k, v = torch.randn(1, 2, 50, 64).to(dtype), torch.randn(1, 2, 50, 64).to(dtype)
        query = torch.randn(1, 2, 2, 64).to(dtype)
        want = torch.softmax((query.float() @ k.float().mT) / 8, -1) @ v.float()
        torch.testing.assert_close(dense.attention(query, k, v, 1 / 8), want, atol=1e-4, rtol=1e-4)
