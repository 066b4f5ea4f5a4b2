"""The GDN branch: short causal conv, RoPE, learned decay and write strength, the gated delta rule."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import gated_delta_rule
from .rope import apply_rope


class GDNBranch(nn.Module):
    """Gated DeltaNet for `num_heads` query heads that share nothing but the layer input.

    The conv starts as the identity (one tap on the current token) and has no activation, so that a
    converted head starts from exactly the pretrained q/k/v; the decay and write gates are new.
    """

    def __init__(self, num_heads: int, num_kv: int, head_dim: int, conv_size: int):
        super().__init__()
        self.num_heads, self.num_kv, self.head_dim, self.conv_size = num_heads, num_kv, head_dim, conv_size
        channels = (num_heads + 2 * num_kv) * head_dim
        self.conv = nn.Parameter(torch.zeros(channels, 1, conv_size))  # depthwise [C, 1, conv_size]
        self.A_log = nn.Parameter(torch.empty(num_heads))
        self.dt_bias = nn.Parameter(torch.empty(num_heads))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        self.conv.zero_()
        self.conv[:, 0, -1] = 1.0
        # Mamba-style: per-token decay exp(-A * dt) with A in [1, 16] and dt log-uniform in [1e-3, 1e-1]
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1, 16).log())
        dt = torch.exp(torch.empty_like(self.dt_bias).uniform_(math.log(1e-3), math.log(1e-1)))
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def forward(self, qkv, a, b, cos, sin, valid, conv_state, recurrent_state, want_state: bool,
                q_norm=None, k_norm=None, kv_index=None):
        """qkv: [B, T, C] projected q|k|v; a, b: [B, T, H]; cos/sin: [B, T, D]; valid: [B, T] bool or None.

        conv_state [B, C, conv_size - 1] and recurrent_state [B, H, K, V] continue a cached sequence (None:
        a fresh one). Returns (out [B, T, H, D], the new conv state, the new recurrent state); the states
        are None unless `want_state`.
        """
        B, T, _ = qkv.shape
        if valid is not None:
            # padded tokens must leave no trace: no conv input, no decay, no write
            qkv = qkv * valid[..., None].to(qkv.dtype)
        # time-major throughout: the conv's taps are then contiguous rows, and its output is the layout q/k/v split
        # from (the cache keeps the conv state channel-major, [B, C, conv_size - 1])
        if conv_state is None:
            history = qkv.new_zeros(B, self.conv_size - 1, qkv.shape[-1])
        else:
            history = conv_state.transpose(1, 2)
        full = torch.cat([history, qkv], dim=1)  # [B, conv_size - 1 + T, C]
        mixed = causal_depthwise_conv(full, self.conv.to(full.dtype))  # [B, T, C]

        d = self.head_dim
        q, k, v = mixed.split([self.num_heads * d, self.num_kv * d, self.num_kv * d], dim=-1)
        q, k, v = (x.reshape(B, T, -1, d) for x in (q, k, v))
        if q_norm is not None:
            q, k = q_norm(q), k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_index is not None:  # shared (not MHA-like) k/v: one copy per KV head, expanded to the query heads
            k, v = k[:, :, kv_index], v[:, :, kv_index]

        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())  # [B, T, H], log decay
        beta = torch.sigmoid(b.float())
        if valid is not None:
            g, beta = g * valid[..., None], beta * valid[..., None]

        # a cached decode step updates the cache's states where they are (no new state per step); training and
        # a first prefill (no state yet) compute fresh ones
        in_place = (want_state and recurrent_state is not None and conv_state is not None and not torch.is_grad_enabled()
                    and recurrent_state.is_contiguous() and conv_state.dtype == qkv.dtype
                    and recurrent_state.dtype == (torch.float64 if qkv.dtype == torch.float64 else torch.float32))
        out, final = gated_delta_rule(
            q, k, v, g=g, beta=beta, initial_state=recurrent_state, output_final_state=want_state, use_qk_l2norm=True,
            in_place=in_place,
        )
        if not want_state:
            return out, None, None
        last = full[:, full.shape[1] - (self.conv_size - 1):].transpose(1, 2)  # [B, C, conv_size - 1]
        if in_place:
            conv_state.copy_(last)
            return out, conv_state, final
        # a copy: a view would keep the whole prefill's conv input alive
        return out, last.clone(memory_format=torch.contiguous_format), final


def causal_depthwise_conv(full: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.conv1d(full.transpose(1, 2), weight, groups=C).transpose(1, 2) for a short kernel, time-major, as a sum
    of shifted copies: the same result, each tap one fused multiply-add over contiguous rows. Its forward beats
    conv1d's (1.2-2.4x), and its backward is a few elementwise ops, where CPU depthwise conv1d backward can be
    pathological (22x slower at B=1, T=8192 on two threads); benchmarks/gdn_conv.py times the three.
    full: [B, K - 1 + T, C]; weight: [C, 1, K] -> [B, T, C]."""
    taps = weight.shape[-1]
    length = full.shape[1] - taps + 1
    per_tap = weight[:, 0, :].t()  # [K, C]: a tap's weights broadcast over the rows
    out = full[:, :length] * per_tap[0]
    for j in range(1, taps):
        out.addcmul_(full[:, j : j + length], per_tap[j])  # in place: autograd keeps the factors, not `out`
    return out
