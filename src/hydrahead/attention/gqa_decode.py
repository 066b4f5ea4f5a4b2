"""Softmax attention for a decode step over keys and values held as tensors, reading each cached byte once.

A decode step has a handful of query rows per KV head (the GQA group times the new tokens) against thousands
of keys, so it is bound by reading the cache. Two things keep a CPU far from that bound with the usual call:
sdpa (and transformers' eager path) repeat the KV heads for GQA, a copy of the whole cache per step, and
`q @ k.mT` hands BLAS the large operand transposed. Here the query rows of a KV head score its keys as
`keys @ q.mT` (the keys as stored, contiguous), and p.v runs over chunks of CHUNK tokens so that the partial
products stay in cache. benchmarks/hybrid_decode.py times whole decode steps with it (its "original" row)
against transformers' sdpa over a DynamicCache (the row below).

Plain PyTorch and exact up to float rounding (tests hold it to sdpa); the callers use it for up to
MAX_ROWS query rows per KV head and no dropout, and sdpa otherwise. A single-token step that sees every key, over a
float32 or bfloat16 cache on the CPU, runs in the native kernel (`hydrahead.kv.native.dense`, tested against this
function), unless HYDRAHEAD_NATIVE=0.
"""

from __future__ import annotations

import torch

from ..kv.native import dense as native_dense

MAX_ROWS = 8  # query rows per KV head up to which a step counts as a decode step
CHUNK = 2048  # tokens per p.v product


# keyword arguments attention functions receive that change nothing here when they have these values; any
# other keyword (a sink, a softcap, a sliding window ...) sends the call to sdpa, which knows what it means
# (None: any value). transformers' decoder layers pass position_ids, use_cache and cache_position along.
NEUTRAL = {"sliding_window": (None,), "is_causal": (None, True), "output_attentions": (None, False),
           "position_ids": None, "use_cache": None, "cache_position": None}


def use_for(query: torch.Tensor, key: torch.Tensor, dropout: float = 0.0, kwargs: dict | None = None) -> bool:
    """Whether a call is a decode step this function serves: few query rows per KV head, no dropout, and no
    keyword argument that would change the attention."""
    for name, value in (kwargs or {}).items():
        if name not in NEUTRAL or (NEUTRAL[name] is not None and value not in NEUTRAL[name]):
            return False
    rows = query.shape[1] // max(key.shape[1], 1) * query.shape[2]
    return dropout == 0.0 and rows <= MAX_ROWS and query.shape[1] % key.shape[1] == 0


def gqa_decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                         scaling: float) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) v -> [B, Q, Hq, D] in query's dtype (the layout attention functions return).

    query [B, Hq, Q, D]; key, value [B, Hk, T, D] (Hq a multiple of Hk); the queries are the last Q positions.
    mask: sdpa's ([B, 1 | Hq, Q, T], True = attend) or an additive float mask, or None (causal, no padding).
    Scores and softmax in float32; rows that may see no key give zeros.
    """
    B, Hq, Q, D = query.shape
    Hk, T = key.shape[1], key.shape[2]
    G = Hq // Hk
    visible = visible_prefix(mask, T) if Q == 1 else None
    if visible:  # the native kernel (kv/native/dense_decode.c) where it takes the call
        out = native_dense.attention(query.reshape(B, Hk, G, D), key[:, :, :visible], value[:, :, :visible], scaling)
        if out is not None:
            return out.view(B, Hq, 1, D).transpose(1, 2).to(query.dtype)
    q = (query.float() * scaling).reshape(B, Hk, G * Q, D)  # rows (group member, query) per KV head
    scores = q.new_empty(B, Hk, T, G * Q)
    for start in range(0, T, CHUNK):
        # the keys as stored on the left: BLAS streams them once (q @ k.mT reads them transposed, about 3x
        # slower); a bf16 cache is widened one chunk at a time, never as a whole copy
        scores[:, :, start:start + CHUNK] = key[:, :, start:start + CHUNK].float() @ q.mT
    scores = scores.mT.contiguous().view(B, Hk, G, Q, T)
    bias = mask_bias(mask, 0, T, T, Q, B, Hk, G, query.device)
    if bias is not None:
        scores = scores + bias
    probs = torch.softmax(scores, dim=-1).view(B, Hk, G * Q, T)
    probs = torch.nan_to_num(probs, nan=0.0)  # a row with every key masked: zeros, as sdpa gives for padding
    out = weighted_values(probs, value)
    return out.view(B, Hk, G, Q, D).reshape(B, Hq, Q, D).transpose(1, 2).to(query.dtype)


def visible_prefix(mask, T: int) -> int | None:
    """n where a decode step's mask (sdpa's bool, additive float, or None) lets every query row see exactly the
    first n of the T keys, as for one unpadded sequence (n = T) or a static cache's filled slots; None for any
    other pattern (padding, a per-head or per-row mask), which the PyTorch path serves."""
    if mask is None:
        return T
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != 1 or mask.shape[-1] != T:
        return None
    seen = mask if mask.dtype == torch.bool else mask == 0
    counts = seen.sum(-1).flatten()
    n = int(counts[0])
    if not bool((counts == n).all()) or not bool(seen[..., :n].all()):
        return None
    return n


def weighted_values(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """probs [..., R, T] (float32, a transposed view is fine) @ value [..., T, D] -> float32 [..., R, D], summed
    CHUNK tokens at a time: one product over a long T streams the values slower on this CPU (sparse decoding's
    retrieval heads at 128K, benchmarks/sparse_decode.py), and a bf16 cache is widened one chunk at a time."""
    out = probs.new_zeros(*probs.shape[:-1], value.shape[-1], dtype=torch.float32)
    T = value.shape[-2]
    for start in range(0, T, CHUNK):
        part = value[..., start:start + CHUNK, :]
        out += probs[..., start:start + part.shape[-2]] @ part.float()
    return out


def mask_bias(mask, start: int, t: int, T: int, Q: int, B: int, H: int, G: int, device) -> torch.Tensor | None:
    """The mask for keys [start, start + t) of T as an additive float32 bias broadcastable to [B, H, G, Q, t]
    (H KV heads, G query heads per KV head); None when there is nothing to add. `mask` is sdpa's ([B, 1 | H*G,
    Q, T], True = attend), an additive float mask, or None (causal, no padding, bottom-right aligned)."""
    if mask is None:
        if Q == 1:
            return None
        keys = torch.arange(start, start + t, device=device)
        queries = torch.arange(T - Q, T, device=device)  # as sdpa's skipped causal mask: query i sees keys <= T - Q + i
        return torch.where(keys[None, :] <= queries[:, None], 0.0, float("-inf"))  # [Q, t]
    part = mask[..., start:start + t]
    part = part.reshape(B, 1, 1, Q, t) if part.shape[1] == 1 else part.reshape(B, H, G, Q, t)
    return torch.where(part, 0.0, float("-inf")) if part.dtype == torch.bool else part.float()
