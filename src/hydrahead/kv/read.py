"""Reading a quantized KV cache at a sparse decode step: dense attention that also returns every token's score
(retrieval heads rank tokens with it), block by block; and the keys and values of selected tokens only."""

from __future__ import annotations

import torch

from . import native
from .base import QTensor
from .mixed import view_parts


def attend_with_scores(view, q: torch.Tensor, valid: torch.Tensor | None, scaling: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B, H, g, D] (g query rows per KV head of `view`, one decode step) over every token of the view.

    Returns (out [B, H, g, D], scores [B, H, N, g], probs [B, H, N, g]), all float32; scores are the scaled
    logits, -inf where `valid` [B, N] is False. Keys are scored one chunk at a time (a tq4 block against a
    rotated query), then values are decoded one chunk at a time against the softmax.
    """
    B, H, g, _ = q.shape
    out = q.new_empty(B, H, g, q.shape[-1], dtype=torch.float32)
    n = view.num_tokens
    scores = q.new_empty(B, H, n, g, dtype=torch.float32)
    probs = torch.empty_like(scores)
    for sub, positions in view_parts(view):
        qs = q[:, positions].float() * scaling  # [B, h, g, D]
        chunks = list(sub.chunks())
        s = torch.cat([chunk_scores(sub, qs, keys) for _, keys, _ in chunks], dim=-1)  # [B, h, g, N]
        if valid is not None:
            s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
        p = torch.softmax(s, dim=-1)
        o = torch.zeros_like(qs)
        for start, _, values in chunks:
            t = values.num_tokens if isinstance(values, QTensor) else values.shape[-2]
            o = o + chunk_values(sub, p[..., start:start + t], values)
        out[:, positions] = o
        scores[:, positions], probs[:, positions] = s.transpose(-1, -2), p.transpose(-1, -2)
    return out, scores, probs


def chunk_scores(view, q: torch.Tensor, keys) -> torch.Tensor:
    """q [B, h, g, D] (scaled) against one chunk of the view's keys -> [B, h, g, t]: packed keys the native kernel
    takes are scored in place (`hydrahead.kv.native.scores`), anything else by the view (decoded, or tq4's
    rotated query)."""
    if isinstance(keys, QTensor):
        fast = native.scores(q, view.gather_heads(keys), view.key_format)
        if fast is not None:
            return fast
    return view.scores(q, keys)


def chunk_values(view, p: torch.Tensor, values) -> torch.Tensor:
    """p [B, h, g, t] @ one chunk of the view's values -> [B, h, g, D], read in place where the native kernel takes
    the format."""
    if isinstance(values, QTensor):
        fast = native.weighted_values(p, view.gather_heads(values), view.value_format)
        if fast is not None:
            return fast
    return p @ view.values(values)


def gathered_attention(view, q: torch.Tensor, heads: list[int], index: torch.Tensor, keep: torch.Tensor,
                       scaling: float) -> torch.Tensor | None:
    """Sparse heads' attention at their selected tokens, with the packed part read in place by the native kernel:
    q [B, S, g, D] of the view's heads `heads`, index and keep [B, S, k] -> float32 [B, S, g, D]. The sink's and the
    recent window's selected rows (float tensors) are attended in PyTorch, the packed blocks' by `native.gathered`,
    one online softmax over both. None where the kernel does not take the view (another format, a view mixing
    formats): the caller then decodes the rows (`gather_rows`)."""
    from .attention import online_step

    B, S, g, D = q.shape
    if len(view_parts(view)) != 1 or not native.takes_gathered(view.key_format, view.value_format, g, q.device):
        return None
    stored = torch.as_tensor(heads, device=index.device)
    if view.heads is not None:
        stored = view.heads.to(index.device)[stored]
    qs = q.float() * scaling
    m = qs.new_full((B, S, g, 1), float("-inf"))
    l, acc = qs.new_zeros((B, S, g, 1)), torch.zeros_like(qs)
    sink, packed, n = view.sink[0].shape[-2], view.quantized_tokens, view.num_tokens
    b, h = torch.arange(B, device=index.device)[:, None, None], stored[None, :, None]
    for first, end, tensors in ((0, sink, view.sink), (sink + packed, n, view.recent)):
        mine = keep & (index >= first) & (index < end)
        if first == end or not mine.any():
            continue
        at = (index - first).clamp(0, end - first - 1)
        s = (qs @ tensors[0][b, h, at].float().mT).masked_fill(~mine[:, :, None, :], float("-inf"))
        m, l, acc = online_step(s, tensors[1][b, h, at].float(), m, l, acc)
    mine = keep & (index >= sink) & (index < sink + packed)
    if packed and mine.any():
        keys, values = view.quantized()
        bias = torch.where(mine, 0.0, float("-inf"))[:, :, None, :]
        step = native.gathered(qs, keys, values, stored, (index - sink).clamp(0, packed - 1), bias, m, l, acc,
                               view.key_format, view.value_format)
        if step is None:
            return None
        m, l, acc = step
    return acc / torch.where(l > 0, l, torch.ones_like(l))


def gather_rows(view, heads: list[int], index: torch.Tensor, q: torch.Tensor | None = None):
    """Keys and values of the selected tokens: heads [S] of `view`, index [B, S, k] -> float32 [B, S, k, D] each.

    With the query rows q [B, S, g, D] of those heads: (q', keys, values), keys in each format's scoring space and q'
    turned to match (float32; `KVView.gather(score_space=True)`), so that q' . keys = q . decoded keys: tq4 keys are
    not rotated back one by one, their heads' query is rotated once."""
    keys = values = None
    turned = None if q is None else q.float().clone()
    for sub, positions in view_parts(view):
        mine = [i for i, h in enumerate(heads) if h in positions]
        if not mine:
            continue
        local = torch.tensor([positions.index(heads[i]) for i in mine], device=index.device)
        k, v = sub.gather(local, index[:, mine], score_space=q is not None)
        if keys is None:
            keys = k.new_empty(index.shape[0], len(heads), index.shape[2], k.shape[-1])
            values = torch.empty_like(keys)
        keys[:, mine], values[:, mine] = k, v
        if turned is not None:
            turned[:, mine] = sub.key_format.key_query(turned[:, mine])
    return (keys, values) if q is None else (turned, keys, values)
