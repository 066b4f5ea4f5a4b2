"""Fused decode attention over a range of packed quantized blocks: one function dequantizes the keys, scores them,
updates the online softmax and adds p.v from the dequantized values, and `torch.compile` (inductor) turns it into
a few loops that read the packed codes and scales once, with no per-block Python loop and no float copy of the
cache in memory.

`fast_chunk` picks the path for a chunk: the native kernel (`hydrahead.kv.native`, on by default) where it takes
the formats, else this compiled function where asked for, else the reference.

The compiled function is a fast path beside the reference (`online_softmax_attention`'s plain-PyTorch loop,
which scores with matmuls); tests hold the two to each other. It is off unless asked for, because compiling costs 5-30 s the
first time a pair of formats is read (and needs a C++ compiler): set HYDRAHEAD_COMPILE=1 in the environment, or
pass `fast=True` to `online_softmax_attention`. If compilation is impossible or fails, the failure is logged
once and the reference path serves every later call for that pair of formats.

The elementwise form (multiply and sum rather than matmul) is what lets inductor decode inside the reduction;
it pays for the few query rows per KV head of a decode step (GQA group x query tokens up to MAX_ROWS), while a
prefill's many rows are better served by the reference's matmuls.
"""

from __future__ import annotations

import logging
import os
import types

import torch

from ..attention import gqa_decode
from . import native
from .base import KVFormat, QTensor

ENV = "HYDRAHEAD_COMPILE"
MAX_ROWS = gqa_decode.MAX_ROWS  # query rows per KV head up to which a step is a decode step (fused form used)

log = logging.getLogger(__name__)
_compiled: dict[tuple[str, str, bool], object] = {}  # (key format, value format, has bias) -> compiled or None
_warned = False


def enabled(fast: bool | None = None) -> bool:
    """Whether to use the compiled path: `fast` when given, else HYDRAHEAD_COMPILE=1 in the environment."""
    if fast is not None:
        return bool(fast)
    return os.environ.get(ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def _qtensor(fmt: KVFormat, payload: torch.Tensor, scales: dict[str, torch.Tensor]) -> QTensor:
    shape = (*payload.shape[:-1], fmt.head_dim)  # [..., t, D]: packed payloads hold fewer bytes than D
    return QTensor(fmt.name, shape, torch.float32, payload, scales)


def chunk_step(q: torch.Tensor, k_payload: torch.Tensor, k_scales: dict[str, torch.Tensor], v_payload: torch.Tensor,
               v_scales: dict[str, torch.Tensor], bias: torch.Tensor | None, m: torch.Tensor, l: torch.Tensor,
               acc: torch.Tensor, key_format: KVFormat, value_format: KVFormat
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk of the online softmax: q [B, H, R, D] (scaled, in the key format's `key_query` space; R query
    rows per KV head), packed keys and values of t tokens [B, H, t, .], bias broadcastable to [B, H, R, t] or
    None, running max m and sum l [B, H, R, 1] and output acc [B, H, R, D] -> the updated (m, l, acc). Plain
    PyTorch: this is what gets compiled."""
    keys = key_format.score_keys(_qtensor(key_format, k_payload, k_scales))  # [B, H, t, D]
    s = (q.unsqueeze(-2) * keys.unsqueeze(-3)).sum(-1)  # [B, H, R, t]
    if bias is not None:
        s = s + bias
    m_new = torch.maximum(m, s.amax(-1, keepdim=True))
    # rows that have seen no visible key yet keep m = -inf; exp(-inf - 0) = 0 keeps them empty
    m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
    p = torch.exp(s - m_safe)
    alpha = torch.exp(m - m_safe)
    values = value_format._dequantize(_qtensor(value_format, v_payload, v_scales)).float()  # [B, H, t, D]
    acc = acc * alpha + (p.unsqueeze(-1) * values.unsqueeze(-3)).sum(-2)
    return m_new, l * alpha + p.sum(-1, keepdim=True), acc


def fast_chunk(q: torch.Tensor, keys: QTensor, values: QTensor, bias: torch.Tensor | None, m: torch.Tensor,
               l: torch.Tensor, acc: torch.Tensor, key_format: KVFormat, value_format: KVFormat, fast: bool | None):
    """One chunk of a decode step on the fastest path that takes it, or None (the caller runs the reference).

    The native kernel (`hydrahead.kv.native`: int4 values with int4 or tq4 keys, or bf16 or fp8 keys and values;
    built on first use) unless
    fast=False or HYDRAHEAD_NATIVE=0; then, when `enabled(fast)`, the inductor-compiled `chunk_step` for any pair of
    formats."""
    if fast is not False and native.takes(key_format, value_format, q.shape[2], q.device):
        step = native.chunk(q, keys, values, bias, m, l, acc, key_format, value_format)
        if step is not None:
            return step
    if enabled(fast):
        return fused_chunk(q, keys, values, bias, m, l, acc, key_format, value_format)
    return None


def fused_chunk(q: torch.Tensor, keys: QTensor, values: QTensor, bias: torch.Tensor | None, m: torch.Tensor,
                l: torch.Tensor, acc: torch.Tensor, key_format: KVFormat, value_format: KVFormat):
    """`chunk_step` compiled for this pair of formats (once; dynamic shapes, so a growing cache does not
    recompile), or None when compilation is unavailable or failed: the caller then runs the reference."""
    key = (repr(key_format), repr(value_format), bias is not None)
    fn = _compiled.get(key, False)
    if fn is False:
        fn = _compiled[key] = torch.compile(_bound(key_format, value_format, len(_compiled)), dynamic=True)
    if fn is None:
        return None
    try:
        # the query's transform (tq4's rotation) stays outside: it is tiny, and its butterfly loop is slow to compile
        return fn(key_format.key_query(q), keys.payload, keys.scales, values.payload, values.scales, bias, m, l, acc)
    except Exception as e:  # noqa: BLE001 - any compiler failure means: use the reference path
        _compiled[key] = None
        _warn(key, e)
        return None


def _step(q, k_payload, k_scales, v_payload, v_scales, bias, m, l, acc):
    formats = _key_format, _value_format  # noqa: F821 - globals of each pair's copy (see _bound)
    return chunk_step(q, k_payload, k_scales, v_payload, v_scales, bias, m, l, acc, *formats)


def _bound(key_format: KVFormat, value_format: KVFormat, i: int):
    """`chunk_step` for one pair of formats, as a function with its own code object whose globals hold the formats.

    Two reasons. Dynamo keeps the compiled variants of a function per code object, with a limit (8) past which it
    silently runs it uncompiled: a code object shared by every pair (a closure, or functools.partial's wrapper)
    lets a few pairs of formats, with and without a mask, push each other past it. And under dynamic=True the
    integer attributes of an object reached through a closure cell become symbolic (an int4 group size of 32 no
    longer a constant), which cost 10x in the generated loops here; attributes of a global are specialized."""
    code = _step.__code__.replace(co_name=f"chunk_step_{i}")
    namespace = dict(globals(), _key_format=key_format, _value_format=value_format)
    return types.FunctionType(code, namespace, code.co_name)


def _warn(key, error: Exception) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("hydrahead: the compiled 4-bit decode attention failed for %s:%s (%s: %s); using the "
                    "plain-PyTorch path instead", key[0], key[1], type(error).__name__, str(error).splitlines()[0]
                    if str(error) else "")


def available() -> tuple[bool, str]:
    """(whether torch.compile works here, why not): compiles and runs a tiny function once."""
    try:
        fn = torch.compile(lambda x: (x * 2).sum(), dynamic=False)
        fn(torch.ones(4))
        return True, ""
    except Exception as e:  # noqa: BLE001 - any failure means no compiled path on this machine
        return False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
