"""Optional fast path: fla's (pip `fla-core`) Triton kernels for the gated delta rule on CUDA."""

from __future__ import annotations

import functools
import importlib


@functools.cache
def _fla_functions():
    """fla's (chunk, fused_recurrent) gated delta rule functions, or None when fla does not import."""
    try:
        module = importlib.import_module("fla.ops.gated_delta_rule")
    except (ImportError, OSError, RuntimeError):  # not installed, or its Triton/CUDA stack fails to load
        return None
    return module.chunk_gated_delta_rule, module.fused_recurrent_gated_delta_rule


def fla_available() -> bool:
    return _fla_functions() is not None


def fla_usable(*tensors) -> bool:
    """True when fla imports and every given tensor (None entries skipped) is on CUDA."""
    return all(x.is_cuda for x in tensors if x is not None) and fla_available()


def fla_gated_delta_rule(q, k, v, *, g, beta, scale=None, initial_state=None, output_final_state=False,
                         use_qk_l2norm=False, recurrent=False):
    """fla's chunked (or, with `recurrent`, fused recurrent) kernel in hydrahead's conventions.

    Layouts match fla's defaults: q, k [B, T, H, K], v [B, T, H, V], g and beta [B, T, H], state
    [B, H, K, V]. Returns (o in v.dtype, float32 final state or None).
    """
    functions = _fla_functions()
    if functions is None:
        raise RuntimeError("mode='fla' needs the fla package: pip install fla-core")
    if not q.is_cuda:
        raise RuntimeError(f"fla's kernels need CUDA tensors, got q on {q.device}")
    chunk, fused_recurrent = functions
    kernel = fused_recurrent if recurrent else chunk
    if initial_state is not None:
        initial_state = initial_state.float()
    # g and beta by keyword: fla's positional order has changed between releases
    o, final_state = kernel(q, k, v, g=g, beta=beta, scale=scale, initial_state=initial_state,
                            output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm)
    return o.to(v.dtype), final_state
