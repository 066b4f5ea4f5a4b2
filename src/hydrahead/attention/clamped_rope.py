"""Attention with RoPE clamped at a window of relative distances (ReRoPE, Su 2023).

A key at distance i - j < window from its query is scored with ordinary RoPE; a key further away is scored
as if it sat exactly `window` tokens back. Inside the native length the FA head therefore sees exactly the
positions the teacher was trained on (it keeps its positional skills: vt, ordered retrieval), and past it it
never meets a rotation it has not seen (it keeps retrieving far beyond the native length, as NoPE does).

RoPE is relative: rope(q, i) . rope(k, j) = rope(q, i - j) . k. So the near scores rotate queries and keys by
their own positions, and the far ones rotate the query alone by `window` against unrotated keys: the cache
stores keys unrotated. Positions are cache indices; with left padding both sides shift alike and only the
distance matters. Plain PyTorch, in query blocks so that memory stays O(block x keys); it is the reference
(no fused kernel yet) and serves training, prefill and decode over a plain (unquantized) cache.
"""

from __future__ import annotations

import torch

from .rope import rotate_half


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., T, D]; cos, sin: [T, D] (broadcast over the leading dims)."""
    return x * cos + rotate_half(x) * sin


def clamped_rope_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotary, window: int,
                           mask: torch.Tensor | None, scaling: float, query_block: int = 256) -> torch.Tensor:
    """softmax(scores * scaling + mask) v with ReRoPE scores.

    q [B, Hq, Tq, D] and k, v [B, Hk, Tk, D] unrotated (Hq a multiple of Hk: GQA); the queries are the last
    Tq of the Tk positions. `rotary(x, position_ids)` gives (cos, sin) [1, T, D] for positions [1, T] (the
    model's rotary embedding). `mask`: [B, 1 | Hq, Tq, Tk], bool (True = attend) or additive float, or None
    for causal. Returns [B, Tq, Hq, D] (the layout attention functions return), in q's dtype.
    """
    B, Hq, Tq, D = q.shape
    Hk, Tk = k.shape[1], k.shape[2]
    g = Hq // Hk
    offset = Tk - Tq  # cache index of query 0
    positions = torch.arange(Tk, device=q.device)
    qf = q.float().view(B, Hk, g, Tq, D)
    # float32 tables: a bf16 cos / sin would lose the angle at large positions
    cos, sin = (x[0] for x in rotary(qf, positions[None]))  # [Tk, D], the key (and query) rotations
    far_cos, far_sin = (x[0, 0] for x in rotary(qf, torch.tensor([[window]], device=q.device)))
    # position 0's cos is the rope type's attention factor (1 for default RoPE): an unrotated key must carry
    # it too, as a rotated one does
    far_cos, far_sin = far_cos * cos[0], far_sin * cos[0]
    kf, vf = k.float()[:, :, None], v.float()[:, :, None]  # [B, Hk, 1, Tk, D]
    out = q.new_empty(B, Hk, g, Tq, D, dtype=torch.float32)
    for a in range(0, Tq, query_block):
        b = min(a + query_block, Tq)
        rows = positions[offset + a:offset + b]  # [t] the block's cache indices
        scores = rotate(qf[..., a:b, :], far_cos, far_sin) @ kf.mT  # [B, Hk, g, t, Tk], every key at `window`
        lo, hi = max(0, offset + a - window + 1), offset + b  # the keys some row of the block sees as near
        near_q = rotate(qf[..., a:b, :], cos[rows], sin[rows])
        near_k = rotate(kf[..., lo:hi, :], cos[lo:hi], sin[lo:hi])
        distance = rows[:, None] - positions[None, lo:hi]  # [t, hi - lo]
        scores[..., lo:hi] = torch.where(distance < window, near_q @ near_k.mT, scores[..., lo:hi])
        scores = scores * scaling + _bias(mask, a, b, rows, positions, B, Hk, g, q.device)
        probs = torch.softmax(scores, dim=-1)
        # rows that may see nothing (padding queries) come out NaN from an all -inf softmax: zeros instead
        out[..., a:b, :] = torch.nan_to_num(probs, nan=0.0) @ vf
    return out.view(B, Hq, Tq, D).transpose(1, 2).to(q.dtype)


def _bias(mask, a: int, b: int, rows, positions, B: int, Hk: int, g: int, device) -> torch.Tensor:
    """The additive float32 mask of query rows [a, b), broadcastable to [B, Hk, g, t, Tk]."""
    if mask is None:
        causal = positions[None, :] <= rows[:, None]  # [t, Tk]
        return torch.where(causal, 0.0, float("-inf"))
    part = mask[:, :, a:b]
    part = part[:, :, None] if part.shape[1] == 1 else part.reshape(B, Hk, g, b - a, part.shape[-1])
    return torch.where(part, 0.0, float("-inf")) if part.dtype == torch.bool else part.float()
