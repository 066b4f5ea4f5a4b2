"""The gated delta rule ops: chunked vs recurrent vs transformers' torch code, gradients, carried state."""

import inspect

import pytest
import torch
import torch.nn.functional as F

from hydrahead.ops import (
    chunk_gated_delta_rule,
    gated_delta,
    gated_delta_rule,
    l2norm,
    recurrent_gated_delta_rule,
)

# float32: outputs and states are O(1), so absolute differences near float32 rounding of O(10) sums
F32 = {"atol": 2e-5, "rtol": 1e-4}
# float64: the chunked and recurrent forms differ only by rounding
F64 = {"atol": 1e-10, "rtol": 1e-9}


def make_inputs(batch=2, length=37, heads=3, k_dim=16, v_dim=8, *, dtype=torch.float32, seed=0,
                with_state=False, unit_keys=True):
    """Random q, k, v, g (<= 0), beta (in (0, 1)) and optionally an initial state.

    Unit keys keep I - beta k k^T contractive, so values stay O(1) without the in-kernel L2 norm.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    k = randn(batch, length, heads, k_dim)
    inputs = {
        "q": randn(batch, length, heads, k_dim),
        "k": F.normalize(k, dim=-1) if unit_keys else k,
        "v": randn(batch, length, heads, v_dim),
        "g": -F.softplus(randn(batch, length, heads) - 1.0),
        "beta": torch.sigmoid(randn(batch, length, heads)),
        "initial_state": 0.5 * randn(batch, heads, k_dim, v_dim) if with_state else None,
    }
    return {name: None if x is None else x.to(dtype) for name, x in inputs.items()}


def run(fn, inputs, **kwargs):
    args = {name: x for name, x in inputs.items() if name not in ("q", "k", "v")}
    return fn(inputs["q"], inputs["k"], inputs["v"], **args, output_final_state=True, **kwargs)


def grads_of(fn, inputs, **kwargs):
    """Gradients of a fixed random projection of (o, final state) w.r.t. every input."""
    leaves = {name: x.detach().clone().requires_grad_() for name, x in inputs.items() if x is not None}
    o, state = run(fn, {**inputs, **leaves}, **kwargs)
    gen = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    loss = loss + (state * torch.randn(state.shape, generator=gen, dtype=state.dtype)).sum()
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))


def chunk_kwargs(fn, chunk_size=16):
    """A small chunk for the chunked form, so short test sequences still span several chunks."""
    return {"chunk_size": chunk_size} if fn is chunk_gated_delta_rule else {}


def transformers_peers():
    """transformers' torch functions, unwrapped from the hub-kernel decorator so the torch code runs."""
    qwen3_next = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    chunk = inspect.unwrap(qwen3_next.torch_chunk_gated_delta_rule)
    recurrent = inspect.unwrap(qwen3_next.torch_recurrent_gated_delta_rule)
    for fn in (chunk, recurrent):
        assert fn.__module__ == qwen3_next.__name__, f"{fn} is not the torch fallback"
    return chunk, recurrent


@pytest.mark.parametrize("length", [1, 7, 63, 64, 65, 130])
@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("use_qk_l2norm", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_matches_recurrent(length, chunk_size, use_qk_l2norm, with_state):
    inputs = make_inputs(length=length, with_state=with_state, unit_keys=not use_qk_l2norm)
    kwargs = {"scale": 0.3, "use_qk_l2norm": use_qk_l2norm}
    o, state = run(chunk_gated_delta_rule, inputs, chunk_size=chunk_size, **kwargs)
    o_ref, state_ref = run(recurrent_gated_delta_rule, inputs, **kwargs)
    assert o.shape == (2, length, 3, 8) and state.shape == (2, 3, 16, 8)
    torch.testing.assert_close(o, o_ref, **F32)
    torch.testing.assert_close(state, state_ref, **F32)


@pytest.mark.parametrize("length", [1, 7, 65, 130])
@pytest.mark.parametrize("chunk_size", [16, 20, 48])
@pytest.mark.parametrize("use_qk_l2norm", [False, True])
def test_chunked_gradients_match_recurrent(length, chunk_size, use_qk_l2norm):
    # chunk 16 is one Neumann leaf; 20 and 48 merge leaves of 5 and 12 into the full inverse
    inputs = make_inputs(length=length, dtype=torch.float64, with_state=True, unit_keys=not use_qk_l2norm)
    kwargs = {"scale": 0.3, "use_qk_l2norm": use_qk_l2norm}
    grads = grads_of(chunk_gated_delta_rule, inputs, chunk_size=chunk_size, **kwargs)
    grads_ref = grads_of(recurrent_gated_delta_rule, inputs, **kwargs)
    assert set(grads) == {"q", "k", "v", "g", "beta", "initial_state"}
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_ref[name], **F64, msg=f"gradient of {name}")


@pytest.mark.parametrize("use_qk_l2norm", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_transformers_torch_code(use_qk_l2norm, with_state):
    peer_chunk, peer_recurrent = transformers_peers()
    inputs = make_inputs(length=150, with_state=with_state, unit_keys=not use_qk_l2norm)
    peer_inputs = {**inputs, "use_qk_l2norm_in_kernel": use_qk_l2norm}
    o_chunk, state_chunk = run(peer_chunk, peer_inputs)
    o_recurrent, state_recurrent = run(peer_recurrent, peer_inputs)
    for fn in (chunk_gated_delta_rule, recurrent_gated_delta_rule):
        o, state = run(fn, inputs, use_qk_l2norm=use_qk_l2norm)
        for o_peer, state_peer in ((o_chunk, state_chunk), (o_recurrent, state_recurrent)):
            torch.testing.assert_close(o, o_peer, **F32)
            torch.testing.assert_close(state, state_peer, **F32)


@pytest.mark.parametrize(("first", "second"), [
    (chunk_gated_delta_rule, chunk_gated_delta_rule),
    (chunk_gated_delta_rule, recurrent_gated_delta_rule),
    (recurrent_gated_delta_rule, chunk_gated_delta_rule),
])
@pytest.mark.parametrize("split", [(45, 1), (45, 38), (32, 32)])
def test_continuing_from_a_state_equals_one_call(first, second, split):
    """Prefill in pieces, then decode: each call starts from the previous call's final state."""
    inputs = make_inputs(length=sum(split), with_state=True)
    head = {name: x if name == "initial_state" else x[:, :split[0]] for name, x in inputs.items()}
    tail = {name: x[:, split[0]:] for name, x in inputs.items() if name != "initial_state"}
    o_head, state_head = run(first, head, **chunk_kwargs(first))
    o_tail, state = run(second, {**tail, "initial_state": state_head}, **chunk_kwargs(second))
    o_ref, state_ref = run(recurrent_gated_delta_rule, inputs)
    torch.testing.assert_close(torch.cat([o_head, o_tail], dim=1), o_ref, **F32)
    torch.testing.assert_close(state, state_ref, **F32)


@pytest.mark.parametrize("fn", [chunk_gated_delta_rule, recurrent_gated_delta_rule])
def test_gradcheck_float64(fn):
    gen = torch.Generator().manual_seed(0)

    def free(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    q, k, v = free(1, 5, 2, 3), free(1, 5, 2, 3), free(1, 5, 2, 3)
    g_free, beta_free, state = free(1, 5, 2), free(1, 5, 2), free(1, 2, 3, 3)
    kwargs = chunk_kwargs(fn, chunk_size=2)

    def call(q, k, v, g_free, beta_free, state):
        return fn(q, k, v, g=-F.softplus(g_free), beta=torch.sigmoid(beta_free), initial_state=state,
                  output_final_state=True, use_qk_l2norm=True, **kwargs)

    assert torch.autograd.gradcheck(call, (q, k, v, g_free, beta_free, state))


@pytest.mark.parametrize("fn", [chunk_gated_delta_rule, recurrent_gated_delta_rule, gated_delta_rule])
def test_bf16_inputs_give_bf16_output_and_float32_state(fn):
    inputs = make_inputs(length=40, dtype=torch.bfloat16, with_state=True)
    o, state = run(fn, inputs)
    assert o.dtype == torch.bfloat16 and state.dtype == torch.float32
    upcast = {name: None if x is None else x.float() for name, x in inputs.items()}
    o_ref, state_ref = run(recurrent_gated_delta_rule, upcast)
    # the inputs are the same bf16 values upcast: only the output's bf16 rounding differs
    torch.testing.assert_close(o.float(), o_ref, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(state, state_ref, **F32)


def test_large_decays_stay_finite():
    # log decays summing to -1e3 per chunk: exp(a) * exp(-b) factorisations overflow here
    inputs = make_inputs(length=70, with_state=True)
    inputs["g"] = -30.0 * torch.ones_like(inputs["g"])
    o, state = run(chunk_gated_delta_rule, inputs, chunk_size=32)
    o_ref, state_ref = run(recurrent_gated_delta_rule, inputs)
    assert torch.isfinite(o).all() and torch.isfinite(state).all()
    torch.testing.assert_close(o, o_ref, **F32)
    torch.testing.assert_close(state, state_ref, **F32)


def test_non_contiguous_inputs():
    inputs = make_inputs(length=50, with_state=True)
    fused = torch.cat([inputs["q"], inputs["k"], inputs["v"]], dim=-1)  # like a fused qkv projection
    strided = {**inputs, "q": fused[..., :16], "k": fused[..., 16:32], "v": fused[..., 32:]}
    assert not strided["q"].is_contiguous()
    for fn in (chunk_gated_delta_rule, recurrent_gated_delta_rule):
        o, state = run(fn, strided)
        o_ref, state_ref = run(fn, inputs)
        torch.testing.assert_close(o, o_ref, atol=0, rtol=0)
        torch.testing.assert_close(state, state_ref, atol=0, rtol=0)


@pytest.mark.parametrize("fn", [chunk_gated_delta_rule, recurrent_gated_delta_rule])
def test_empty_sequence_returns_the_initial_state(fn):
    inputs = make_inputs(length=0, with_state=True)
    o, state = run(fn, inputs)
    assert o.shape == (2, 0, 3, 8)
    torch.testing.assert_close(state, inputs["initial_state"], atol=0, rtol=0)
    assert state.data_ptr() != inputs["initial_state"].data_ptr()


def test_no_final_state_unless_asked():
    inputs = make_inputs(length=10)
    for fn in (chunk_gated_delta_rule, recurrent_gated_delta_rule):
        _, state = fn(inputs["q"], inputs["k"], inputs["v"], g=inputs["g"], beta=inputs["beta"])
        assert state is None


def test_l2norm_matches_definition():
    x = torch.randn(4, 7, dtype=torch.float64)
    expected = x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(l2norm(x), expected, atol=0, rtol=0)


@pytest.mark.parametrize(("change", "message"), [
    ({"k": torch.zeros(2, 10, 3, 15)}, 
     r"k must have q's shape \[B, T, H, K\] = \(2, 10, 3, 16\), got \(2, 10, 3, 15\)"),
    ({"v": torch.zeros(2, 9, 3, 8)}, r"v must be \[B, T, H, V\].*got \(2, 9, 3, 8\)"),
    ({"g": torch.zeros(2, 10, 4)}, r"g must be \[B, T, H\] = \(2, 10, 3\).*got \(2, 10, 4\)"),
    ({"beta": torch.zeros(2, 10)}, r"beta must be \[B, T, H\] = \(2, 10, 3\).*got \(2, 10\)"),
    ({"initial_state": torch.zeros(2, 3, 8, 16)}, r"initial_state must be \[B, H, K, V\] = \(2, 3, 16, 8\)"),
    ({"q": torch.zeros(10, 3, 16)}, r"q must be \[B, T, H, K\]"),
])
@pytest.mark.parametrize("fn", [chunk_gated_delta_rule, recurrent_gated_delta_rule, gated_delta_rule])
def test_shape_errors_name_the_tensor(fn, change, message):
    inputs = {**make_inputs(length=10), **change}
    with pytest.raises(ValueError, match=message):
        run(fn, inputs)


def test_bad_chunk_size_and_mode():
    inputs = make_inputs(length=10)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        run(chunk_gated_delta_rule, inputs, chunk_size=0)
    with pytest.raises(ValueError, match="mode must be"):
        run(gated_delta_rule, inputs, mode="triton")


@pytest.mark.parametrize(("length", "expected"),
                         [(1, "recurrent"), (8, "recurrent"), (9, "chunk"), (300, "chunk")])
def test_dispatch_on_cpu_picks_the_torch_path(monkeypatch, length, expected):
    calls = []
    for name in ("chunk", "recurrent"):
        original = getattr(gated_delta, f"{name}_gated_delta_rule")

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(gated_delta, f"{name}_gated_delta_rule", spy)
    monkeypatch.setattr(gated_delta, "fla_gated_delta_rule", lambda *a, **kw: pytest.fail("fla for CPU tensors"))
    inputs = make_inputs(length=length, with_state=True)
    o, state = run(gated_delta_rule, inputs)
    assert calls == [expected]
    o_ref, state_ref = run(recurrent_gated_delta_rule, inputs)
    torch.testing.assert_close(o, o_ref, **F32)
    torch.testing.assert_close(state, state_ref, **F32)


def test_forced_fla_mode_on_cpu_fails_clearly():
    with pytest.raises(RuntimeError, match="fla"):
        run(gated_delta_rule, make_inputs(length=4), mode="fla")


@pytest.mark.parametrize("mode, length", [("recurrent", 1), ("recurrent", 5), ("chunk", 40), ("auto", 1)])
def test_in_place_updates_the_given_state_and_equals_the_fresh_result(mode, length):
    inputs = make_inputs(length=length, with_state=True)
    o_ref, state_ref = run(gated_delta_rule, inputs, mode=mode)
    state = inputs["initial_state"].clone()
    storage = state.data_ptr()
    with torch.no_grad():
        o, final = run(gated_delta_rule, {**inputs, "initial_state": state}, mode=mode, in_place=True)
    assert final is state and state.data_ptr() == storage
    torch.testing.assert_close(o, o_ref, **F32)
    torch.testing.assert_close(state, state_ref, **F32)


def test_in_place_refuses_what_it_cannot_update():
    inputs = make_inputs(length=1, with_state=True)
    with pytest.raises(ValueError, match="needs an initial_state"):
        run(gated_delta_rule, {**inputs, "initial_state": None}, in_place=True)
    with pytest.raises(ValueError, match="contiguous torch.float32"):
        run(gated_delta_rule, {**inputs, "initial_state": inputs["initial_state"].double()}, in_place=True)
    with pytest.raises(ValueError, match="contiguous"):
        run(gated_delta_rule, {**inputs, "initial_state": inputs["initial_state"].mT.contiguous().mT}, in_place=True)
    with pytest.raises(ValueError, match="autograd"):
        run(gated_delta_rule, {**inputs, "initial_state": inputs["initial_state"].clone().requires_grad_()},
            in_place=True)
