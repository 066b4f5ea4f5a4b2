"""The sparse decoding attention function, registered with transformers' `AttentionInterface`.

Prefill (more than one query) and modules that are not switched on run transformers' SDPA. At a decode
step, retrieval KV heads attend densely and select tokens by the attention of their query heads; sparse KV
heads gather the keys and values of the tokens chosen by the nearest lower retrieval head with the same
KV index and attend to those alone, so their cost grows with the budget, not the context.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .config import DecodingError
from .select import select_tokens
from .state import LayerSlot, contiguous_runs

NAME = "hydrahead_sparse"
SLOT = "_hydrahead_sparse_slot"


def register() -> None:
    """Make `NAME` a valid `attn_implementation` with SDPA's boolean masks (idempotent)."""
    AttentionInterface.register(NAME, sparse_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def key_validity(attention_mask, n: int) -> torch.Tensor | None:
    """[B, N] bool: which keys the (single) query may see, or None if all. Boolean SDPA masks or additive ones."""
    if not isinstance(attention_mask, torch.Tensor):
        return None
    row = attention_mask[:, 0, -1, :n] if attention_mask.dim() == 4 else attention_mask[:, -n:]
    return row if row.dtype == torch.bool else row == 0


def sparse_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [B, Hq, T, D]; key, value [B, Hk, N, D]. Returns ([B, T, Hq, D], None) like transformers' SDPA."""
    slot: LayerSlot | None = getattr(module, SLOT, None)
    if slot is not None:
        if not isinstance(key, torch.Tensor):
            raise DecodingError(f"sparse decoding gathers from plain key / value tensors, not a {type(key).__name__} "
                                "(a quantized KV cache): the two do not combine yet")
        slot.state.on_attention(query.shape[2])
    if slot is None or query.shape[2] != 1 or slot.state.dense_now:
        return _dense(module, query, key, value, attention_mask, scaling, dropout, slot, kwargs)
    config = slot.state.config
    n = key.shape[2]
    k = config.tokens(n)
    if config.fallback and k >= n:
        return _dense(module, query, key, value, attention_mask, scaling, dropout, slot, kwargs)
    return decode_step(slot, query, key, value, key_validity(attention_mask, n), scaling or query.shape[-1] ** -0.5, min(k, n)), None


def _dense(module, query, key, value, attention_mask, scaling, dropout, slot, kwargs):
    if slot is not None and query.shape[2] == 1:
        b, h, n, d = key.shape
        slot.state.stats.add(b * h * n, b * h * n, 2 * d * key.element_size())
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def decode_step(slot: LayerSlot, query, key, value, valid, scaling: float, k: int) -> torch.Tensor:
    """One query per row: [B, Hq, 1, D] -> [B, 1, Hq, D]."""
    state, config = slot.state, slot.state.config
    b, hk, n, d = key.shape
    g = query.shape[1] // hk
    q = query.reshape(b, hk, g, d)
    out = query.new_empty(b, hk, g, d)
    # read what lower layers chose before this layer publishes: a sparse head never reuses its own layer
    sparse = [i for i, r in enumerate(slot.retrieval) if not r and slot.kv_ids[i] in state.selected]
    sources = [state.selected[slot.kv_ids[i]] for i in sparse]
    orphans = [i for i, r in enumerate(slot.retrieval) if not r and slot.kv_ids[i] not in state.selected]
    dense_runs = slot.runs if not orphans else contiguous_runs(sorted(set(orphans) | {i for a, e in slot.runs for i in range(a, e)}))

    importance: dict[int, torch.Tensor] = {}  # kv -> [B, N] attention mass of its query heads
    for start, end in dense_runs:
        o, probs = dense_attend(q[:, start:end], key[:, start:end], value[:, start:end], valid, scaling)
        out[:, start:end] = o
        for j in range(start, end):
            if slot.retrieval[j]:
                kv = slot.kv_ids[j]
                mass = probs[:, j - start].sum(-1)
                importance[kv] = importance[kv] + mass if kv in importance else mass
    if importance:
        block = config.block_size if config.mode == "block" else None
        index, keep = select_tokens(torch.stack(list(importance.values()), 1), None if valid is None else valid[:, None],
                                    k, config.sink, config.recent, block)  # [B, R, k']
        for r, kv in enumerate(importance):
            state.selected[kv] = (index[:, r], keep[:, r], slot.layer)
    for i, source in zip(sparse, sources):
        state.sources[(slot.layer, slot.kv_ids[i])] = source[2]
    if sparse:
        index = torch.stack([s[0] for s in sources], 1)  # [B, S, k']
        keep = torch.stack([s[1] for s in sources], 1)
        heads = torch.tensor(sparse, device=key.device)
        out[:, heads] = gathered_attend(q[:, heads], key, value, heads, index, keep, scaling, state.scratch)
    n_dense = sum(e - a for a, e in dense_runs)
    state.stats.add(b * (n_dense * n + len(sparse) * (index.shape[-1] if sparse else 0)), b * hk * n, 2 * d * key.element_size())
    return out.view(b, 1, hk * g, d)


def dense_attend(q, key, value, valid, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, R, g, D] over key, value [B, R, N, D] -> (out [B, R, g, D], probs [B, R, N, g] float32).

    Scores as K q^T, not q K^T: with the row-major cache on the left the matmul streams K once (about 4x
    faster on CPU for a handful of query rows), which keeps a retrieval head as cheap as SDPA's dense head.
    """
    scores = torch.matmul(key, q.transpose(-1, -2)) * scaling  # [B, R, N, g]
    if valid is not None:
        scores = scores.masked_fill(~valid[:, None, :, None], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-2)
    return torch.matmul(probs.transpose(-1, -2).to(value.dtype), value), probs


def gathered_attend(q, key, value, heads: torch.Tensor, index, keep, scaling: float, scratch=None) -> torch.Tensor:
    """q [B, S, g, D]; key, value [B, Hk, N, D]; the S key heads `heads`; index, keep [B, S, k].

    Only the k selected rows of each head are read (an index_select on the flattened cache), then attended
    to: the work is O(k), never a dense score masked afterwards. `scratch(name, shape, like)` may lend reused
    buffers for the gathered rows: fresh multi-megabyte allocations are returned to the OS on free, and
    faulting their pages back in costs more than the gather itself.
    """
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
    scores = torch.matmul(ks, q.transpose(-1, -2)) * scaling  # [B, S, k, g], as in dense_attend
    scores = scores.masked_fill(~keep[..., None], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-2)
    return torch.matmul(probs.transpose(-1, -2).to(vs.dtype), vs)
