"""hydrahead's one attention function, registered with transformers' `AttentionInterface` as "hydrahead".

Everything the head plan sets at decode time is read per module and per head, so nothing competes for
`config._attn_implementation`:
- keys and values arrive as plain tensors (any cache) or as a quantized cache's view (`hydrahead.kv`, each KV
  head in its own format);
- a module with a sparse-decoding slot (`sparse_decoding`) decodes sparsely: retrieval KV heads attend
  densely and rank the tokens, sparse KV heads attend only to the tokens chosen by the nearest lower
  retrieval head with the same KV index, reading just those rows (from a quantized view, decoding just them).
Prefill (more than one query), modules without a slot and dense steps take the dense path: sdpa on tensors,
the blockwise online softmax on a view.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..attention import gqa_decode
from ..kv.attention import ATTENTION_NAME, blockwise_attention_forward, is_view
from ..kv.native import dense as native_dense
from ..kv.read import attend_with_scores, gather_rows, gathered_attention
from .select import select_tokens
from .state import LayerSlot, contiguous_runs

NAME = ATTENTION_NAME
SLOT = "_hydrahead_sparse_slot"


def register() -> None:
    """Make `NAME` a valid `attn_implementation` with SDPA's boolean masks (idempotent)."""
    AttentionInterface.register(NAME, hydrahead_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def key_validity(attention_mask, n: int) -> torch.Tensor | None:
    """[B, N] bool: which keys the (single) query may see, or None if all. Boolean SDPA masks or additive ones."""
    if not isinstance(attention_mask, torch.Tensor):
        return None
    row = attention_mask[:, 0, -1, :n] if attention_mask.dim() == 4 else attention_mask[:, -n:]
    return row if row.dtype == torch.bool else row == 0


def hydrahead_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [B, Hq, T, D]; key, value tensors [B, Hk, N, D] or one quantized view. Returns ([B, T, Hq, D], None)."""
    slot: LayerSlot | None = getattr(module, SLOT, None)
    if slot is not None:
        slot.state.on_attention(query.shape[2])
    if slot is None or query.shape[2] != 1 or slot.state.dense_now:
        return _dense(module, query, key, value, attention_mask, scaling, dropout, slot, kwargs)
    config = slot.state.config
    n = key.num_tokens if is_view(key) else key.shape[2]
    k = config.tokens(n)
    if config.fallback and k >= config.dense_share * n:  # sparse would read too much of the context to pay
        return _dense(module, query, key, value, attention_mask, scaling, dropout, slot, kwargs)
    source = ViewKV(key) if is_view(key) else TensorKV(key, value)
    return decode_step(slot, query, source, key_validity(attention_mask, n), scaling or query.shape[-1] ** -0.5,
                       min(k, n)), None


def _dense(module, query, key, value, attention_mask, scaling, dropout, slot, kwargs):
    if slot is not None and query.shape[2] == 1:
        h, n = (key.num_heads, key.num_tokens) if is_view(key) else (key.shape[1], key.shape[2])
        slot.state.stats.add(query.shape[0] * h * n, query.shape[0] * h * n, 2 * query.shape[-1] * query.element_size())
    return blockwise_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                       **kwargs)


class TensorKV:
    """Keys and values as tensors [B, Hk, N, D]: dense heads slice them, sparse heads index_select rows."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor):
        self.key, self.value = key, value
        self.num_heads, self.num_tokens = key.shape[1], key.shape[2]

    def attend(self, q, start: int, end: int, valid, scaling: float):
        return dense_attend(q, self.key[:, start:end], self.value[:, start:end], valid, scaling)

    def gathered(self, q, heads: list[int], index, keep, scaling: float, scratch):
        return gathered_attend(q, self.key, self.value, torch.tensor(heads, device=self.key.device), index, keep, scaling,
                               scratch)


class ViewKV:
    """A quantized cache's view: dense heads score it block by block, sparse heads decode only their rows."""

    def __init__(self, view):
        self.view = view
        self.num_heads, self.num_tokens = view.num_heads, view.num_tokens

    def attend(self, q, start: int, end: int, valid, scaling: float):
        heads = self.view.index_select(1, torch.arange(start, end, device=q.device))
        out, scores, probs = attend_with_scores(heads, q, valid, scaling)
        return out.to(q.dtype), scores, probs

    def gathered(self, q, heads: list[int], index, keep, scaling: float, scratch):
        out = gathered_attention(self.view, q, heads, index, keep, scaling)  # the packed rows read in place
        if out is not None:
            return out.to(q.dtype)
        turned, keys, values = gather_rows(self.view, heads, index, q)  # keys in the formats' scoring space
        return attend_rows(turned, keys, values, keep, scaling).to(q.dtype)


def ranking(kind: str, scores: torch.Tensor, probs: torch.Tensor, scaling: float) -> torch.Tensor:
    """One retrieval key head's token scores [B, N] from its query rows' scores and probs [B, N, g].

    "attention": the softmax mass, summed over the group. "authors" (LycheeDecode's code): the group's mean
    query dotted with each key, i.e. the mean of the raw logits (the scaling taken back out), no softmax.
    """
    if kind == "authors":
        return scores.float().mean(-1) / scaling
    return probs.sum(-1)


def decode_step(slot: LayerSlot, query, source, valid, scaling: float, k: int) -> torch.Tensor:
    """One query per row: [B, Hq, 1, D] -> [B, 1, Hq, D]."""
    state, config = slot.state, slot.state.config
    b, hq, _, d = query.shape
    hk, n = source.num_heads, source.num_tokens
    g = hq // hk
    q = query.reshape(b, hk, g, d)
    out = query.new_empty(b, hk, g, d)
    # read what lower layers chose before this layer publishes: a sparse head never reuses its own layer
    sparse = [i for i, r in enumerate(slot.retrieval) if not r and slot.kv_ids[i] in state.selected]
    sources = [state.selected[slot.kv_ids[i]] for i in sparse]
    orphans = [i for i, r in enumerate(slot.retrieval) if not r and slot.kv_ids[i] not in state.selected]
    dense_runs = slot.runs if not orphans else contiguous_runs(sorted(set(orphans) | {i for a, e in slot.runs for i in range(a, e)}))

    importance: dict[int, torch.Tensor] = {}  # kv -> [B, N] ranking of its retrieval query heads
    for start, end in dense_runs:
        o, scores, probs = source.attend(q[:, start:end], start, end, valid, scaling)
        out[:, start:end] = o
        for j in range(start, end):
            if slot.retrieval[j]:
                kv = slot.kv_ids[j]
                rank = ranking(config.score, scores[:, j - start], probs[:, j - start], scaling)
                importance[kv] = importance[kv] + rank if kv in importance else rank
    if importance:
        block = config.block_size if config.mode == "block" else None
        index, keep = select_tokens(torch.stack(list(importance.values()), 1), None if valid is None else valid[:, None],
                                    k, config.sink, config.recent, block)  # [B, R, k']
        for r, kv in enumerate(importance):
            state.selected[kv] = (index[:, r], keep[:, r], slot.layer)
    for i, source_sel in zip(sparse, sources):
        state.sources[(slot.layer, slot.kv_ids[i])] = source_sel[2]
    if sparse:
        index = torch.stack([s[0] for s in sources], 1)  # [B, S, k']
        keep = torch.stack([s[1] for s in sources], 1)
        out[:, sparse] = source.gathered(q[:, sparse], sparse, index, keep, scaling, state.scratch)
    n_dense = sum(e - a for a, e in dense_runs)
    state.stats.add(b * (n_dense * n + len(sparse) * (index.shape[-1] if sparse else 0)), b * hk * n,
                    2 * d * query.element_size())
    return out.view(b, 1, hk * g, d)


def dense_attend(q, key, value, valid, scaling: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B, R, g, D] over key, value [B, R, N, D] -> (out [B, R, g, D], scores [B, R, N, g], probs [B, R, N, g]
    float32; scores -inf where `valid` [B, N] is False).

    The native kernel where it takes the call (it reads the cache in place and returns the scores it computed);
    otherwise scores as K q^T, not q K^T: with the row-major cache on the left the matmul streams K once (about 4x
    faster on CPU for a handful of query rows), which keeps a retrieval head as cheap as SDPA's dense head.
    """
    native = native_dense.attention(q, key, value, scaling, keep=None if valid is None else valid[:, None],
                                    with_scores=True)
    if native is not None:  # the kernel reads the cache in place (kv/native/dense_decode.c)
        out, scores, probs = native
        return out.to(value.dtype), scores.transpose(-1, -2), probs.transpose(-1, -2)
    scores = torch.matmul(key, q.transpose(-1, -2)) * scaling  # [B, R, N, g]
    if valid is not None:
        scores = scores.masked_fill(~valid[:, None, :, None], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-2)
    return gqa_decode.weighted_values(probs.transpose(-1, -2), value).to(value.dtype), scores, probs


def gathered_attend(q, key, value, heads: torch.Tensor, index, keep, scaling: float, scratch=None) -> torch.Tensor:
    """q [B, S, g, D]; key, value [B, Hk, N, D]; the S key heads `heads`; index, keep [B, S, k].

    Only the k selected rows of each head are read, then attended to: the work is O(k), never a dense score masked
    afterwards. The native kernel reads the rows in place where it takes the call (float32 / bfloat16 on the CPU);
    otherwise an index_select on the flattened cache gathers them first. `scratch(name, shape, like)` may lend reused
    buffers for the gathered rows: fresh multi-megabyte allocations are returned to the OS on free, and
    faulting their pages back in costs more than the gather itself.
    """
    out = native_dense.attention(q, key, value, scaling, heads=heads.tolist(), index=index, keep=keep)
    if out is not None:  # the kernel reads the selected rows in place: no gathered copy
        return out.to(value.dtype)
    b, hk, n, d = key.shape
    s, k = index.shape[1], index.shape[2]
    if key.is_contiguous() and value.is_contiguous():
        rows = ((torch.arange(b, device=key.device)[:, None] * hk + heads[None]) * n)[..., None] + index  # [B, S, k]
        flat = rows.reshape(-1)
        if scratch is None:
            ks, vs = key.view(-1, d).index_select(0, flat), value.view(-1, d).index_select(0, flat)
        else:
            ks = torch.index_select(key.view(-1, d), 0, flat, out=scratch("keys", (flat.numel(), d), key))
            vs = torch.index_select(value.view(-1, d), 0, flat, out=scratch("values", (flat.numel(), d), value))
        ks, vs = ks.view(b, s, k, d), vs.view(b, s, k, d)
    else:
        expand = index[..., None].expand(-1, -1, -1, d)
        ks = torch.stack([key[:, int(h)].gather(1, expand[:, i]) for i, h in enumerate(heads)], 1)
        vs = torch.stack([value[:, int(h)].gather(1, expand[:, i]) for i, h in enumerate(heads)], 1)
    return attend_rows(q, ks, vs, keep, scaling)


def attend_rows(q, ks, vs, keep, scaling: float) -> torch.Tensor:
    """q [B, S, g, D] over its own gathered rows ks, vs [B, S, k, D] where keep [B, S, k] -> [B, S, g, D]."""
    scores = torch.matmul(ks, q.to(ks.dtype).transpose(-1, -2)) * scaling  # [B, S, k, g], as in dense_attend
    scores = scores.masked_fill(~keep[..., None], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-2)
    return torch.matmul(probs.transpose(-1, -2).to(vs.dtype), vs)


register()
