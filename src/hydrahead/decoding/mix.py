"""The student of role training: every KV head's decode-time output is z * dense + (1 - z) * sparse-reuse.

Registered with transformers' `AttentionInterface` like the sparse decoder. A teacher-forced forward runs
the prompt and the dense model's answer at once; the last `window` rows are the answer tokens, which a real
decode would produce one step at a time. For those rows each KV head computes its dense attention, its own
top-k selection, and the attention over the tokens the layers below pass up (masked here rather than
gathered: training needs every row's gradient, not speed). A head passes its own selection up when its
sampled gate is open (z > 0.5) and the one it received otherwise, so the path follows the roles the gates
describe while the mix keeps z differentiable. Layer 0 always has z = 1.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .config import SparseConfig
from .select import select_tokens, selection_mask

NAME = "hydrahead_mix"
SLOT = "_hydrahead_mix_slot"


class MixState:
    """Shared by the layers during one student forward. z: [L, KV] gates; is_answer: [B, window] bool."""

    def __init__(self, config: SparseConfig, window: int, is_answer: torch.Tensor, z: torch.Tensor):
        self.config, self.window, self.is_answer, self.z = config, window, is_answer, z
        self.selected: dict[int, torch.Tensor] = {}  # kv -> [B, window, T] bool, passed up the layers


def register() -> None:
    AttentionInterface.register(NAME, mixed_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def mixed_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [B, Hq, T_q, D]; key, value [B, Hk, T, D] (T >= T_q with a cached prompt). Returns ([B, T_q, Hq, D], None)."""
    dense, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    slot = getattr(module, SLOT, None)
    if slot is None:
        return dense, None
    layer, state = slot
    b, hq, _, d = query.shape
    hk, t, w = key.shape[1], key.shape[2], state.window  # t keys: the cached prompt and the rows themselves
    g = hq // hk
    scaling = scaling or d**-0.5
    allowed = _row_validity(attention_mask, b, w, t, query.device)  # [B, W, T]
    q = query[:, :, -w:].reshape(b, hk, g, w, d)
    scores = torch.matmul(q, key[:, :, None].transpose(-1, -2)) * scaling  # [B, Hk, g, W, T]
    # a finite floor, not -inf: rows that see nothing must not turn the backward pass into NaN
    floor = torch.finfo(scores.dtype).min
    probs = torch.softmax(scores.masked_fill(~allowed[:, None, None], floor).float(), -1)
    dense_rows = torch.matmul(probs.to(value.dtype), value[:, :, None])  # [B, Hk, g, W, D]
    config = state.config
    block = config.block_size if config.mode == "block" else None
    index, keep = select_tokens(probs.detach().sum(2), allowed[:, None], config.tokens(t), config.sink, config.recent, block)
    own = selection_mask(index, keep, t)  # [B, Hk, W, T]
    if layer == 0 or not state.selected:
        mixed, passed = dense_rows, own
    else:
        received = torch.stack([state.selected[kv] for kv in range(hk)], 1)  # [B, Hk, W, T]
        sparse_probs = torch.softmax(scores.masked_fill(~(received & allowed[:, None])[:, :, None], floor).float(), -1)
        sparse_rows = torch.matmul(sparse_probs.to(value.dtype), value[:, :, None])
        z = state.z[layer].to(dense_rows.dtype).view(1, hk, 1, 1, 1)
        mixed = z * dense_rows + (1 - z) * sparse_rows
        passed = torch.where((state.z[layer].detach() > 0.5).view(1, hk, 1, 1), own, received)
    for kv in range(hk):
        state.selected[kv] = passed[:, kv]
    mixed = mixed.permute(0, 3, 1, 2, 4).reshape(b, w, hq, d)  # [B, W, Hq, D], the layout SDPA returns
    rows = torch.where(state.is_answer[:, :, None, None], mixed, dense[:, -w:])
    return torch.cat([dense[:, :-w], rows], dim=1), None


def _row_validity(attention_mask, b: int, w: int, t: int, device) -> torch.Tensor:
    """[B, W, T] bool: the keys each of the last W rows may see (causal and not padding)."""
    if isinstance(attention_mask, torch.Tensor):
        rows = attention_mask[:, 0, -w:, :t]
        return (rows if rows.dtype == torch.bool else rows == 0).expand(b, w, t)
    keys = torch.arange(t, device=device)
    return (keys[None] <= torch.arange(t - w, t, device=device)[:, None]).expand(b, w, t)
