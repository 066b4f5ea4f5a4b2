"""The FA branch: softmax attention over the cached KV heads, optionally without RoPE and with a
log-length query scale, and an output gate that starts as the identity."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

# Qwen3's is the same function; both read module.num_key_value_groups
from transformers.models.llama.modeling_llama import eager_attention_forward

from ..errors import HydraheadError
from . import gqa_decode
from .clamped_rope import clamped_rope_attention
from .rope import apply_rope


class FABranch(nn.Module):
    """Softmax attention for `len(heads)` query heads over `len(kv_heads)` cached KV heads.

    When every cached KV head serves the same number of FA query heads, the attention call runs as GQA on
    the cache as is; otherwise the KV heads are gathered per query head (a copy, so plans at KV
    granularity are cheaper at decode).
    """

    is_causal = True

    def __init__(self, config, heads: list[int], kv_heads: list[int], group_size: int, position: str, logscale_length: int):
        super().__init__()
        self.config = config
        self.num_heads = len(heads)
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.position = position
        self.log_base = math.log(logscale_length)
        per_kv = [sum(1 for h in heads if h // group_size == kv) for kv in kv_heads]
        self.uniform = len(set(per_kv)) <= 1
        self.num_key_value_groups = per_kv[0] if per_kv and self.uniform else 1
        self.kv_index = [kv_heads.index(h // group_size) for h in heads]  # FA query head -> cached KV slot
        self.attention_dropout = getattr(config, "attention_dropout", 0.0)
        self.sliding_window = None  # sliding-window layers are refused at conversion
        if position in ("nope_logscale", "rope_clamped"):
            self.logscale_slope = nn.Parameter(torch.ones(self.num_heads))
        if position == "rope_clamped":
            from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

            # Qwen3's rotary embedding is Llama's; its tables are buffers that are not saved
            self.rotary = LlamaRotaryEmbedding(config=config)
            self.window = logscale_length  # RoPE up to the native length, clamped beyond

    def query_scale(self, position_ids: torch.Tensor, dtype) -> torch.Tensor:
        """[B or 1, T, H, 1]: 1 up to `logscale_length` keys, then 1 + slope * (log n / log L - 1)."""
        n = (position_ids.float() + 1).clamp(min=1)
        excess = torch.relu(n.log() / self.log_base - 1)  # [B, T]
        return (1 + excess[..., None] * self.logscale_slope.float())[..., None].to(dtype)

    def forward(self, q, k, v, gate, cos, sin, position_ids, attention_mask, cache, layer_idx: int):
        """q: [B, T, H_fa, D]; k, v: [B, T, H_kv, D]; gate: [B, T, H_fa * D] logits. Returns [B, T, H_fa, D].

        `cache` (a HydraCache or None) stores this layer's keys and values through the Cache API."""
        if self.position == "rope":
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        else:
            q = q * self.query_scale(position_ids, q.dtype)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)
        if not self.uniform:
            index = torch.as_tensor(self.kv_index, device=k.device)
            k, v = k.index_select(1, index), v.index_select(1, index)
        if self.position == "rope_clamped":
            return self._clamped(q, k, v, gate, attention_mask)
        implementation = self.config._attn_implementation
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        if not isinstance(k, torch.Tensor):
            # a quantized cache's view (the plan's kv_formats): hydrahead's attention is the one that reads it
            from ..decoding.attention import hydrahead_attention_forward as attention
        elif implementation == "sdpa" and not self.training and gqa_decode.use_for(q, k):
            # a decode step: the same softmax attention as sdpa, reading the cache once (gqa_decode.py)
            out = gqa_decode.gqa_decode_attention(q, k, v, attention_mask, self.scaling)
            return out * (2 * torch.sigmoid(gate.view_as(out)))
        out, _ = attention(
            self, q, k, v, attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
        )
        # 2 * sigmoid(0) == 1 exactly: a zero-initialised gate projection leaves the branch unchanged
        return out * (2 * torch.sigmoid(gate.view_as(out)))

    def _clamped(self, q, k, v, gate, attention_mask):
        """The rope_clamped branch: its own attention (clamped_rope.py) over keys cached unrotated."""
        from ..decoding.attention import SLOT

        if not isinstance(k, torch.Tensor):
            raise HydraheadError("FA heads with fa_position 'rope_clamped' read a plain cache only: quantized KV "
                                 "formats are not supported for them yet")
        if getattr(self, SLOT, None) is not None:
            raise HydraheadError("FA heads with fa_position 'rope_clamped' do not support sparse decoding yet")
        if self.training and self.attention_dropout:
            raise HydraheadError("fa_position 'rope_clamped' has no attention dropout")
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() != 4:
            raise HydraheadError(f"rope_clamped attention needs a 4-d mask, got shape {tuple(attention_mask.shape)}")
        out = clamped_rope_attention(q, k, v, self.rotary, self.window, attention_mask, self.scaling)
        return out * (2 * torch.sigmoid(gate.view_as(out)))
