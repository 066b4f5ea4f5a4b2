"""fla's kernels (the CUDA fast path) against the PyTorch reference, through `gated_delta_rule`."""

import pytest
import torch
import torch.nn.functional as F

from hydrahead.ops import chunk_gated_delta_rule, gated_delta, gated_delta_rule

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# bf16 inputs: fla computes in bf16 with float32 accumulation, the reference in float32 throughout
BF16 = {"atol": 3e-2, "rtol": 3e-2}


@pytest.fixture(scope="module", autouse=True)
def fla_ops():
    return pytest.importorskip("fla.ops.gated_delta_rule", reason="needs fla: pip install fla-core")


def make_inputs(length, *, batch=2, heads=4, k_dim=64, v_dim=64, seed=0, unit_keys=True):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device="cuda")

    k = randn(batch, length, heads, k_dim)
    return {
        "q": randn(batch, length, heads, k_dim).bfloat16(),
        "k": (F.normalize(k, dim=-1) if unit_keys else k).bfloat16(),
        "v": randn(batch, length, heads, v_dim).bfloat16(),
        "g": F.logsigmoid(randn(batch, length, heads) + 3.0),
        "beta": torch.sigmoid(randn(batch, length, heads)).bfloat16(),
        "initial_state": 0.5 * randn(batch, heads, k_dim, v_dim),
    }


def call(fn, inputs, **kwargs):
    return fn(inputs["q"], inputs["k"], inputs["v"], g=inputs["g"], beta=inputs["beta"],
              initial_state=inputs["initial_state"], output_final_state=True, **kwargs)


def reference(inputs, **kwargs):
    """The PyTorch chunked form on the same (bf16-rounded) values, in float32."""
    upcast = {name: x.float() for name, x in inputs.items()}
    return call(chunk_gated_delta_rule, upcast, **kwargs)


@pytest.mark.parametrize("length", [1, 63, 200])
@pytest.mark.parametrize("use_qk_l2norm", [False, True])
def test_fla_matches_reference(length, use_qk_l2norm):
    inputs = make_inputs(length, unit_keys=not use_qk_l2norm)
    o, state = call(gated_delta_rule, inputs, mode="fla", use_qk_l2norm=use_qk_l2norm)
    o_ref, state_ref = reference(inputs, use_qk_l2norm=use_qk_l2norm)
    assert o.dtype == torch.bfloat16 and state.dtype == torch.float32
    torch.testing.assert_close(o.float(), o_ref, **BF16)
    torch.testing.assert_close(state, state_ref, **BF16)


def test_fla_prefill_then_decode_continues_the_state():
    inputs = make_inputs(101)
    head = {name: x if name == "initial_state" else x[:, :100] for name, x in inputs.items()}
    tail = {name: x[:, 100:] for name, x in inputs.items() if name != "initial_state"}
    _, state_head = call(gated_delta_rule, head, mode="fla")
    o_tail, state = call(gated_delta_rule, {**tail, "initial_state": state_head}, mode="fla")
    o_ref, state_ref = reference(inputs)
    torch.testing.assert_close(o_tail.float(), o_ref[:, 100:], **BF16)
    torch.testing.assert_close(state, state_ref, **BF16)


def test_fla_gradients_match_reference():
    inputs = make_inputs(130)
    leaves = {name: x.detach().clone().requires_grad_() for name, x in inputs.items() if name != "initial_state"}
    o, _ = call(gated_delta_rule, {**inputs, **leaves}, mode="fla", use_qk_l2norm=True)
    grads = torch.autograd.grad(o.float().square().sum(), list(leaves.values()))
    ref_leaves = {name: x.detach().float().requires_grad_() for name, x in leaves.items()}
    o_ref, _ = reference({**inputs, **ref_leaves}, use_qk_l2norm=True)
    grads_ref = torch.autograd.grad(o_ref.square().sum(), list(ref_leaves.values()))
    for name, grad, grad_ref in zip(leaves, grads, grads_ref, strict=True):
        relative = (grad.float() - grad_ref).norm() / grad_ref.norm()
        assert relative < 5e-2, f"gradient of {name}: relative error {relative:.3g}"


@pytest.mark.parametrize(("length", "recurrent"), [(1, True), (200, False)])
def test_auto_mode_uses_fla_on_cuda(monkeypatch, length, recurrent):
    calls = []
    original = gated_delta.fla_gated_delta_rule

    def spy(*args, **kwargs):
        calls.append(kwargs["recurrent"])
        return original(*args, **kwargs)

    monkeypatch.setattr(gated_delta, "fla_gated_delta_rule", spy)
    call(gated_delta_rule, make_inputs(length))
    assert calls == [recurrent]
