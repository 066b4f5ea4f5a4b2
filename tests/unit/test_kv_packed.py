"""The packed quantized KV storage and the fused decode attention: every registered format packs and reads back
what it quantized; the layer appends in place (no copy of its window or blocks per step); batch operations and
the sparse gather read the packed buffers; the fused chunk function, eager and compiled, equals the reference
loop; a compiler failure falls back to the reference."""

import logging

import pytest
import torch

from hydrahead.kv import FORMATS, QuantizedKVLayer, fused, get_format, native
from hydrahead.kv.attention import online_softmax_attention
from hydrahead.kv.packed import PackedBlocks
from hydrahead.kv.spec import VARIANTS, parse_cache_spec
from hydrahead.kv.view import KVView

D = 32


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def no_native(monkeypatch):
    """The inductor path under test: the native int4 kernel (tested in test_kv_native.py) would take int4 first."""
    monkeypatch.setenv(native.ENV, "0")


@pytest.fixture
def fresh_compiled(no_native):
    """Forget compiled functions and the logged warning around a test that changes how compilation goes."""
    saved, warned = dict(fused._compiled), fused._warned
    fused._compiled.clear()
    fused._warned = False
    yield
    fused._compiled.clear()
    fused._compiled.update(saved)
    fused._warned = warned


def every_format() -> list[tuple[str, dict]]:
    """Each registered format with its default options and with each of its variants."""
    out = []
    for name in FORMATS:
        out.append((name, {}))
        out += [(name, options) for options in VARIANTS.get(name, {}).values()]
    return out


FORMAT_IDS = [f"{name}-{'-'.join(map(str, o.values())) or 'default'}" for name, o in every_format()]


def blocks_of(fmt, n=5, shape=(2, 3, 32, D), seed=0):
    """n blocks of different magnitudes (so per-call scales differ from block to block), quantized one by one."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(*shape, generator=g) * (1 + 3 * i) for i in range(n)]
    return xs, [fmt.quantize(x) for x in xs]


@pytest.mark.parametrize("name, options", every_format(), ids=FORMAT_IDS)
def test_every_format_packs_and_reads_back_what_it_quantized(name, options):
    fmt = get_format(name, D, **options)
    _, qs = blocks_of(fmt)
    packed = PackedBlocks(fmt, 32)
    for q in qs:
        packed.append(q)  # capacity 1, 2, 4, 8: grown three times on the way
    assert packed.num_blocks == 5 and packed.capacity == 8
    for i, q in enumerate(qs):
        back = packed.block(i)
        assert back.shape == q.shape and back.scales.keys() == q.scales.keys()
        for a, b in zip((back.payload, *back.scales.values()), (q.payload, *q.scales.values())):
            assert a.shape == b.shape and torch.equal(a.view(torch.uint8) if a.dtype.itemsize == 1 else a, b.view(
                torch.uint8) if b.dtype.itemsize == 1 else b)
    # a range of blocks decodes as the blocks one by one, and its rows alone as the same rows
    joined = packed.range(1, 4)
    assert joined.num_tokens == 96
    expected = torch.cat([fmt.dequantize(q) for q in qs[1:4]], dim=-2)
    assert torch.equal(fmt.dequantize(joined), expected)
    g = torch.Generator().manual_seed(1)
    at = tuple(torch.randint(0, n, (40,), generator=g) for n in (2, 3, 96))
    assert torch.equal(fmt.dequantize_at(joined, at), expected.float()[at])
    rows = torch.randint(0, 2 * 3 * 96, (17,), generator=g)
    assert torch.equal(fmt.dequantize_rows(joined, rows), expected.float().reshape(-1, D)[rows])
    payload, scales = packed.nbytes()
    assert payload + scales == sum(q.nbytes for q in qs) and payload == sum(q.payload.nbytes for q in qs)


@pytest.mark.parametrize("name, options", every_format(), ids=FORMAT_IDS)
def test_batch_operations_move_packed_codes_without_reencoding(name, options):
    fmt = get_format(name, D, **options)
    _, qs = blocks_of(fmt, n=3)
    packed = PackedBlocks(fmt, 32)
    for q in qs:
        packed.append(q)
    before = fmt.dequantize(packed.range(0, 3))
    packed.map_batch(lambda t: t.index_select(0, torch.tensor([1, 1, 0])))
    assert torch.equal(fmt.dequantize(packed.range(0, 3)), before[[1, 1, 0]])
    assert torch.equal(fmt.dequantize(packed.block(2)), fmt.dequantize(qs[2])[[1, 1, 0]])


def filled_layer(spec, tokens, window=8, sink=2, block=32, batch=2, heads=2, seed=0):
    keys, values = parse_cache_spec(spec)
    layer = QuantizedKVLayer(0, keys.build(D), values.build(D), window=window, sink=sink, block_size=block)
    g = torch.Generator().manual_seed(seed)
    k, v = torch.randn(batch, heads, tokens, D, generator=g), torch.randn(batch, heads, tokens, D, generator=g)
    return layer, k, v


def test_decode_steps_write_in_place_and_views_read_the_slabs():
    layer, k, v = filled_layer("tq4:int4", 300)
    layer.update(k[:, :, :100], v[:, :, :100])
    slab = layer._recent[0].data_ptr()
    storages = set()
    for t in range(100, 300):
        view, _ = layer.update(k[:, :, t:t + 1], v[:, :, t:t + 1])
        assert layer._recent[0].data_ptr() == slab  # the recent slab is never reallocated
        assert view.recent[0].untyped_storage().data_ptr() == slab  # and the view reads it, no concatenation
        storages.add(layer.packed_keys._buffers["payload"].data_ptr())
        # the step's own tokens are attended in full precision, even those its update just quantized
        dk, dv = view.dense()
        assert torch.equal(dk[:, :, -view.recent[0].shape[-2]:], k[:, :, t + 1 - view.recent[0].shape[-2]:t + 1])
    assert layer.quantized_tokens == 288 and len(storages) <= 4  # 2 blocks after the prefill, doubling to 16
    assert layer.keys.shape[-2] == 10 and torch.equal(layer.keys, k[:, :, 290:300])


@pytest.mark.parametrize("spec", ["tq4:int4", "fp8-head", "nvfp4", "int4"])
def test_a_cache_after_batch_operations_equals_one_fed_the_selected_rows(spec):
    layer, k, v = filled_layer(spec, 140, batch=3)
    layer.update(k[:, :, :120], v[:, :, :120])
    layer.batch_select_indices(torch.tensor([2, 0]))
    layer.batch_repeat_interleave(2)
    view, _ = layer.update(k[[2, 2, 0, 0], :, 120:], v[[2, 2, 0, 0], :, 120:])
    # nvfp4 and fp8 scales span the batch, so the reference is the cache above re-read, not a fresh cache
    reference, _, _ = filled_layer(spec, 140, batch=3)
    reference.update(k[:, :, :120], v[:, :, :120])
    ref_view, _ = reference.update(k[:, :, 120:], v[:, :, 120:])
    got, want = view.dense(), ref_view.dense()
    for a, b in zip(got, want):
        assert torch.equal(a, b[[2, 2, 0, 0]])


@pytest.mark.parametrize("spec", ["tq4:int4", "int4:nvfp4", "fp8-head:mxfp4", "bf16"])
def test_gather_picks_rows_from_every_part_as_the_dense_view(spec):
    layer, k, v = filled_layer(spec, 200, sink=3)
    layer.update(k, v)
    view, _ = layer.update(k[:, :, :1], v[:, :, :1])  # the blocks the first update quantized, and 38 recent
    assert view.num_blocks == 5 and view.sink[0].shape[-2] == 3
    g = torch.Generator().manual_seed(2)
    index = torch.randint(0, view.num_tokens, (2, 3, 25), generator=g)
    index[0, 0, :3] = torch.tensor([0, 3, view.num_tokens - 1])  # the sink, the first quantized, the newest token
    heads = torch.tensor([1, 0, 1])
    keys, values = view.gather(heads, index)
    dk, dv = view.dense()
    b = torch.arange(2)[:, None, None]
    assert torch.equal(keys, dk[b, heads[None, :, None], index].float())
    assert torch.equal(values, dv[b, heads[None, :, None], index].float())
    # in the key format's scoring space (tq4: rotated keys, against a rotated query) the scores are the same
    q = torch.randn(2, 3, 2, keys.shape[-1], generator=g)
    scored, values_too = view.gather(heads, index, score_space=True)
    assert torch.equal(values_too, values)
    torch.testing.assert_close(view.key_format.key_query(q) @ scored.mT, q @ keys.mT, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("spec", ["int4", "tq4:int4"])
def test_sparse_heads_read_packed_rows_in_place_as_the_decoded_gather(spec):
    """The native kernel at selected tokens (sink, packed blocks and recent window, some hidden) equals attention
    over the rows `gather` decodes."""
    if not native.available()[0]:
        pytest.skip("the native kernel cannot be built here")
    from hydrahead.decoding.attention import attend_rows
    from hydrahead.kv.read import gather_rows, gathered_attention

    layer, k, v = filled_layer(spec, 200, sink=3)
    layer.update(k, v)
    view, _ = layer.update(k[:, :, :1], v[:, :, :1])
    g = torch.Generator().manual_seed(4)
    index = torch.randint(0, view.num_tokens, (2, 3, 40), generator=g)
    index[0, 0, :3] = torch.tensor([0, 3, view.num_tokens - 1])  # the sink, the first packed token, the newest
    keep = torch.rand(2, 3, 40, generator=g) > 0.2
    heads = [1, 0, 1]
    q = torch.randn(2, 3, 2, k.shape[-1], generator=g)
    got = gathered_attention(view, q, heads, index, keep, 0.125)
    assert got is not None
    turned, keys, values = gather_rows(view, heads, index, q)
    torch.testing.assert_close(got, attend_rows(turned, keys, values, keep, 0.125), atol=1e-5, rtol=1e-5)


PAIRS = ["int4", "int4:mxfp4", "int4:nvfp4", "tq4:int4", "tq4:mxfp4", "tq4:nvfp4"]


def decode_view(spec, tokens=300):
    layer, k, v = filled_layer(spec, tokens)
    layer.update(k[:, :, :-1], v[:, :, :-1])
    return layer.update(k[:, :, -1:], v[:, :, -1:])[0]


def reference_and_query(view, mask_kind="none", seed=3):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(2, 4, 1, D, generator=g) * 3
    mask = None
    if mask_kind == "bool":
        mask = torch.ones(2, 1, 1, view.num_tokens, dtype=torch.bool)
        mask[1, :, :, :40] = False  # left padding of the second row, reaching into the quantized blocks
    return query, mask, online_softmax_attention(query, view, mask, D**-0.5, fast=False)


@pytest.mark.parametrize("spec", [*PAIRS, "fp8-head", "bf16", "tq4-qjl:int4-channel"])
def test_the_fused_chunk_function_uncompiled_equals_the_reference(spec, monkeypatch, fresh_compiled):
    # torch.compile replaced by the identity: the very function that gets compiled, run eagerly
    monkeypatch.setattr(fused.torch, "compile", lambda fn, **kw: fn)
    view = decode_view(spec)
    query, mask, expected = reference_and_query(view, "bool")
    got = online_softmax_attention(query, view, mask, D**-0.5, fast=True)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert fused._compiled  # the fused path really ran
    # a hybrid's gathered heads read the same packed chunks
    heads = view.index_select(1, torch.tensor([1, 1, 0]))
    q3 = query[:, :3]
    assert torch.allclose(online_softmax_attention(q3, heads, None, D**-0.5, fast=True),
                          online_softmax_attention(q3, heads, None, D**-0.5, fast=False), atol=1e-5, rtol=1e-5)


def need_compiler():
    ok, why = fused.available()
    if not ok:
        pytest.skip(f"torch.compile cannot build here: {why}")


def compiled_equals_reference(spec, masks, caplog):
    need_compiler()
    view = decode_view(spec)
    with caplog.at_level(logging.WARNING, logger=fused.__name__):
        for mask_kind in masks:
            query, mask, expected = reference_and_query(view, mask_kind)
            got = online_softmax_attention(query, view, mask, D**-0.5, fast=True)
            assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert not [r for r in caplog.records if r.name == fused.__name__]  # compiled, not fallen back
    assert all(fn is not None for fn in fused._compiled.values())


def test_the_compiled_fused_attention_equals_the_reference_int4(caplog, no_native):
    compiled_equals_reference("int4", ["none"], caplog)  # the masked variant is a second compilation: slow tier


@pytest.mark.slow  # 10-20 s of compilation per pair of formats and mask
@pytest.mark.parametrize("spec", PAIRS)
def test_the_compiled_fused_attention_equals_the_reference(spec, caplog, no_native):
    compiled_equals_reference(spec, ["none", "bool"], caplog)


def test_a_compiler_failure_falls_back_to_the_reference_and_says_so_once(monkeypatch, caplog, fresh_compiled):
    def broken(fn, **kw):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler\nmore detail")
        return run

    monkeypatch.setattr(fused.torch, "compile", broken)
    view = decode_view("tq4:int4")
    query, _, expected = reference_and_query(view)
    with caplog.at_level(logging.WARNING, logger=fused.__name__):
        for _ in range(3):
            assert torch.equal(online_softmax_attention(query, view, None, D**-0.5, fast=True), expected)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "RuntimeError: no C++ compiler" in messages[0] and "plain-PyTorch" in messages[0]


def test_the_switch(monkeypatch):
    monkeypatch.delenv(fused.ENV, raising=False)
    assert not fused.enabled() and fused.enabled(True)
    monkeypatch.setenv(fused.ENV, "1")
    assert fused.enabled() and not fused.enabled(False)
    monkeypatch.setenv(fused.ENV, "0")
    assert not fused.enabled()


def test_a_prefill_and_a_view_over_no_block_never_take_the_fused_path(monkeypatch, fresh_compiled):
    monkeypatch.setattr(fused.torch, "compile", lambda fn, **kw: pytest.fail("compiled for a prefill"))
    view = decode_view("int4")
    query = torch.randn(2, 4, 7, D)  # 2 x 7 = 14 query rows per KV head: the matmul reference serves them
    online_softmax_attention(query, view, None, D**-0.5, fast=True)
    assert isinstance(view, KVView) and not fused._compiled
