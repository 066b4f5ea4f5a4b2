"""Attention over a quantized KV cache, a chunk of packed blocks at a time with an online softmax (flash-style).

It reads the KVView that a QuantizedKVLayer returns from `update` (or the MixedKVView of a layer whose heads
differ in format: each group of heads attends over its own view); plain key/value tensors (any other cache,
or none) go to sdpa, so switching a model to it changes nothing else. While a view holds no quantized block
yet (the prefill of a fresh cache) it also runs sdpa, on the high-precision tokens.

It is the dense path of hydrahead's one attention function ("hydrahead" in transformers'
AttentionInterface, `hydrahead.decoding.attention`), which also runs sparse decoding over the same views:
`blockwise_attention(model)` switches a model to that function.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..attention import gqa_decode
from . import fused, native
from .base import QTensor
from .mixed import MixedKVView, view_parts
from .view import CHUNK_TOKENS, KVView

NATIVE_CHUNK_TOKENS = 1 << 20  # tokens per native-kernel call: the whole quantized range of any cache here

ATTENTION_NAME = "hydrahead"  # hydrahead's one attention function (hydrahead.decoding.attention)


def is_view(key) -> bool:
    """Whether attention was handed a quantized cache's view rather than key tensors."""
    return isinstance(key, (KVView, MixedKVView))


def blockwise_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [B, Hq, Q, D]; key and value the same KVView (or tensors [B, Hkv, T, D]). Returns ([B, Q, Hq, D], None).

    The blockwise path serves inference over a cache: it applies no dropout and returns no weights.
    """
    if not is_view(key):
        return dense_attention(module, query, key, value, attention_mask, scaling, dropout, kwargs)
    if not key.num_blocks:
        keys, values = key.dense()
        return dense_attention(module, query, keys, values, attention_mask, scaling, dropout, kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    return view_attention(query, key, attention_mask, scaling).to(query.dtype), None


def dense_attention(module, query, key, value, attention_mask, scaling, dropout, kwargs):
    """Key and value tensors: a decode step reads them once (`gqa_decode_attention`), anything else goes to sdpa."""
    if gqa_decode.use_for(query, key, dropout, kwargs):
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        return gqa_decode.gqa_decode_attention(query, key, value, attention_mask, scaling), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def view_attention(query: torch.Tensor, view, mask: torch.Tensor | None, scaling: float,
                   fast: bool | None = None) -> torch.Tensor:
    """`online_softmax_attention` over a KVView, or over each part of a MixedKVView for its own query heads."""
    parts = view_parts(view)
    if len(parts) == 1 and isinstance(view, KVView):
        return online_softmax_attention(query, view, mask, scaling, fast)
    B, Hq, Q, D = query.shape
    G = Hq // view.num_heads
    out = query.new_empty(B, Q, Hq, D, dtype=torch.float32)
    for sub, positions in parts:
        heads = torch.tensor([p * G + i for p in positions for i in range(G)], device=query.device)
        part_mask = mask if mask is None or mask.shape[1] == 1 else mask[:, heads]
        out[:, :, heads] = online_softmax_attention(query[:, heads], sub, part_mask, scaling, fast)
    return out


def online_softmax_attention(query: torch.Tensor, view: KVView, mask: torch.Tensor | None, scaling: float,
                             fast: bool | None = None) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) v over the view's chunks in float32; -> [B, Q, Hq, D].

    The running max `m`, normaliser `l` and unnormalised output `acc` are rescaled as each chunk raises
    the max, so only one chunk's scores and dequantized values exist at a time. `mask` is sdpa's
    ([B, 1 | Hq, Q, T], True = attend), an additive float mask, or None (causal, no padding).

    A decode step's quantized chunks go to a fast path where one takes them (`hydrahead.kv.fused.fast_chunk`): the
    native int4 kernel by default, the inductor-compiled function with `fast=True` or HYDRAHEAD_COMPILE=1.
    `fast=False`, or a chunk no fast path takes, runs this plain loop: the reference they are tested against.
    """
    B, Hq, Q, D = query.shape
    H = view.num_heads
    G = Hq // H
    q = (query.float() * scaling).reshape(B, H, G * Q, D)  # rows (group member, query) per KV head
    m = q.new_full((B, H, G * Q, 1), float("-inf"))
    l = q.new_zeros((B, H, G * Q, 1))
    acc = q.new_zeros((B, H, G * Q, D))
    T = view.num_tokens
    use_fast = fast is not False and G * Q <= fused.MAX_ROWS
    # the native kernel keeps one chunk's scores only (R x t floats), so it reads the whole quantized range at once
    # and the per-call costs are paid once per layer; the other paths decode chunks of CHUNK_TOKENS
    whole = use_fast and native.takes(view.key_format, view.value_format, G * Q, q.device)
    for start, keys, values in view.chunks(NATIVE_CHUNK_TOKENS if whole else CHUNK_TOKENS):
        t = keys.num_tokens if isinstance(keys, QTensor) else keys.shape[-2]
        bias = gqa_decode.mask_bias(mask, start, t, T, Q, B, H, G, q.device)
        if use_fast and isinstance(keys, QTensor):
            rows = None if bias is None else bias.expand(B, bias.shape[1], G, Q, t).reshape(B, -1, G * Q, t)
            step = fused.fast_chunk(q, view.gather_heads(keys), view.gather_heads(values), rows, m, l, acc,
                                    view.key_format, view.value_format, fast)
            if step is not None:
                m, l, acc = step
                continue
        s = view.scores(q, keys)  # [B, H, G*Q, t]
        if bias is not None:
            s = (s.view(B, H, G, Q, t) + bias).view(B, H, G * Q, t)
        m, l, acc = online_step(s, view.values(values), m, l, acc)
    out = acc / torch.where(l > 0, l, torch.ones_like(l))  # fully masked rows (padding queries) give zeros
    return out.view(B, H, G, Q, D).reshape(B, Hq, Q, D).transpose(1, 2)


def online_step(s: torch.Tensor, values: torch.Tensor, m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the online softmax: scores s [..., R, t] (with -inf where hidden) and float values [..., t, D]
    update the running max m and sum l [..., R, 1] and the unnormalised output acc [..., R, D]."""
    m_new = torch.maximum(m, s.amax(-1, keepdim=True))
    # rows that have seen no visible key yet keep m = -inf; exp(-inf - 0) = 0 keeps them empty
    m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
    p = torch.exp(s - m_safe)
    alpha = torch.exp(m - m_safe)
    return m_new, l * alpha + p.sum(-1, keepdim=True), acc * alpha + p @ values


def register() -> None:
    """Make "hydrahead" a valid attention implementation (with sdpa's masks); idempotent."""
    from ..decoding.attention import register as register_hydrahead

    register_hydrahead()


def use_blockwise_attention(model) -> None:
    """Switch `model` to hydrahead's attention for good (it runs sdpa for plain key / value tensors)."""
    register()
    if model.config._attn_implementation != ATTENTION_NAME:
        model.set_attn_implementation(ATTENTION_NAME)


@contextmanager
def blockwise_attention(model):
    """Run `model` with hydrahead's attention inside the block; its previous implementation comes back after."""
    previous = model.config._attn_implementation
    use_blockwise_attention(model)
    try:
        yield model
    finally:
        if previous != ATTENTION_NAME:
            model.set_attn_implementation(previous)
