"""The head-wise hybrid attention: one layer's FA and GDN heads as batched tensor work, then the fusion."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from ..plan import HeadPlan
from .full import FABranch
from .gdn import GDNBranch
from .options import HybridOptions

if TYPE_CHECKING:
    from ..cache import HydraCache


class HybridAttention(nn.Module):
    """The token mixer of a hydrahead decoder layer, following `plan` for layer `layer_idx`.

    One projection computes, for all heads at once, the FA heads' q and their cached KV heads' k/v, the FA
    output gates, the GDN heads' q/k/v (k/v per query head when MHA-like) and their decay / write gates.
    Head outputs are put back in the original head order before the original `o_proj`.
    """

    def __init__(self, config, layer_idx: int, plan: HeadPlan, options: HybridOptions, qk_norm: bool):
        super().__init__()
        self.config, self.layer_idx, self.options = config, layer_idx, options
        shape = plan.shape
        self.num_heads, self.head_dim = shape.num_heads, shape.head_dim
        h, d, group = shape.num_heads, shape.head_dim, shape.group_size
        self.fa_heads, self.gdn_heads = plan.fa_heads[layer_idx], plan.gdn_heads(layer_idx)
        self.fa_kv_heads = plan.fa_kv_heads(layer_idx)
        gdn_kv = plan.gdn_kv_heads(layer_idx)
        n_fa, n_gdn = len(self.fa_heads), len(self.gdn_heads)
        n_gdn_kv = n_gdn if options.gdn_mha else len(gdn_kv)
        self.gdn_kv_index = None if options.gdn_mha else [gdn_kv.index(q // group) for q in self.gdn_heads]
        self.split_sizes = {
            "fa_q": n_fa * d,
            "fa_k": len(self.fa_kv_heads) * d,
            "fa_v": len(self.fa_kv_heads) * d,
            "fa_gate": n_fa * d,
            "gdn_qkv": (n_gdn + 2 * n_gdn_kv) * d,
            "gdn_a": n_gdn,
            "gdn_b": n_gdn,
            "head_gate": h if options.fusion == "gate" else 0,
        }
        bias = getattr(config, "attention_bias", False)
        self.in_proj = nn.Linear(config.hidden_size, sum(self.split_sizes.values()), bias=bias)
        self.o_proj = nn.Linear(h * d, config.hidden_size, bias=bias)
        self.q_norm = Qwen3RMSNorm(d, eps=config.rms_norm_eps) if qk_norm else None
        self.k_norm = Qwen3RMSNorm(d, eps=config.rms_norm_eps) if qk_norm else None
        self.fa = FABranch(config, self.fa_heads, self.fa_kv_heads, group, options.fa_position, options.logscale_length) if n_fa else None
        self.gdn = GDNBranch(n_gdn, n_gdn_kv, d, options.conv_size) if n_gdn else None
        if options.fusion == "scale":
            self.gamma = nn.Parameter(torch.ones(h))
        self.norm_eps = config.rms_norm_eps
        order = [(self.fa_heads + self.gdn_heads).index(i) for i in range(h)]
        # FA heads come out first; a gather puts them back unless that already is the original order
        self.head_order = None if order == list(range(h)) else order
        with torch.no_grad():
            self.rows("fa_gate").zero_()
            self.rows("head_gate").zero_()

    def rows(self, name: str, bias: bool = False) -> torch.Tensor:
        """A view of the fused projection's rows (or bias) for one part, e.g. `rows("fa_q")`."""
        start = 0
        for key, size in self.split_sizes.items():
            if key == name:
                tensor = self.in_proj.bias if bias else self.in_proj.weight
                return tensor[start : start + size]
            start += size
        raise KeyError(name)

    @classmethod
    def from_attention(cls, attn: nn.Module, config, layer_idx: int, plan: HeadPlan, options: HybridOptions,
                       share=lambda module: module) -> HybridAttention:
        """Build from a pretrained attention module, reusing its q/k/v rows, o_proj and q/k norms (taken as
        `share(module)`: the module itself, or a copy that leaves `attn` untouched)."""
        weight = attn.q_proj.weight
        qk_norm = getattr(attn, "q_norm", None) is not None
        module = cls(config, layer_idx, plan, options, qk_norm).to(device=weight.device, dtype=weight.dtype)
        group = plan.shape.group_size
        gdn_kv = [q // group for q in module.gdn_heads] if options.gdn_mha else plan.gdn_kv_heads(layer_idx)
        sources = {
            "fa_q": (attn.q_proj, module.fa_heads),
            "fa_k": (attn.k_proj, module.fa_kv_heads),
            "fa_v": (attn.v_proj, module.fa_kv_heads),
            "gdn_q": (attn.q_proj, module.gdn_heads),
            "gdn_k": (attn.k_proj, gdn_kv),
            "gdn_v": (attn.v_proj, gdn_kv),
        }
        d = plan.shape.head_dim
        std = getattr(config, "initializer_range", 0.02)
        with torch.no_grad():
            for bias in [False, True] if module.in_proj.bias is not None else [False]:
                take = {name: _head_rows(proj.bias if bias else proj.weight, heads, d) for name, (proj, heads) in sources.items()}
                for name in ("fa_q", "fa_k", "fa_v"):
                    module.rows(name, bias).copy_(take[name])
                module.rows("gdn_qkv", bias).copy_(torch.cat([take["gdn_q"], take["gdn_k"], take["gdn_v"]]))
                for name in ("fa_gate", "head_gate"):  # the identity at conversion
                    module.rows(name, bias).zero_()
                for name in ("gdn_a", "gdn_b"):
                    if bias:
                        module.rows(name, bias).zero_()
                    else:
                        module.rows(name, bias).normal_(0, std)
        module.o_proj = share(attn.o_proj)
        if qk_norm:
            module.q_norm, module.k_norm = share(attn.q_norm), share(attn.k_norm)
        return module

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None, token_mask: torch.Tensor | None, position_ids: torch.Tensor,
                cache: HydraCache | None = None) -> torch.Tensor:
        """hidden_states [B, T, hidden] -> [B, T, hidden].

        attention_mask: the FA heads' mask in the form the attention implementation takes (None: causal,
        no padding); token_mask: [B, T] bool, False at padding (None: no padding), which the GDN heads
        must leave out of their state; position_ids: [B or 1, T]; cache: the model's `HydraCache`, or None.
        """
        B, T, _ = hidden_states.shape
        d = self.head_dim
        cos, sin = position_embeddings  # [B, T, D]
        parts = dict(zip(self.split_sizes, self.in_proj(hidden_states).split(list(self.split_sizes.values()), dim=-1)))

        outputs = []
        if self.fa is not None:
            q = parts["fa_q"].view(B, T, -1, d)
            k = parts["fa_k"].view(B, T, -1, d)
            v = parts["fa_v"].view(B, T, -1, d)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            outputs.append(self.fa(q, k, v, parts["fa_gate"], cos, sin, position_ids, attention_mask, cache, self.layer_idx))
        if self.gdn is not None:
            state = cache.gdn_state(self.layer_idx) if cache is not None else None
            out, conv, recurrent = self.gdn(
                parts["gdn_qkv"], parts["gdn_a"], parts["gdn_b"], cos, sin, token_mask,
                None if state is None else state.conv, None if state is None else state.recurrent,
                state is not None, self.q_norm, self.k_norm, self.gdn_kv_index,
            )
            if cache is not None:
                cache.update_gdn_state(self.layer_idx, conv, recurrent)
            outputs.append(out)
        heads = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]  # [B, T, H, D], FA heads first
        if self.head_order is not None:
            heads = heads[:, :, self.head_order]
        heads = self.fuse(heads, parts["head_gate"])
        return self.o_proj(heads.reshape(B, T, -1))

    def fuse(self, heads: torch.Tensor, head_gate: torch.Tensor) -> torch.Tensor:
        """[B, T, H, D] -> [B, T, H, D]: concat as is, or RMS-normalise each head, then scale or gate it."""
        if self.options.fusion == "concat":
            return heads
        x = F.rms_norm(heads.float(), (self.head_dim,), eps=self.norm_eps)
        if self.options.fusion == "scale":
            x = x * self.gamma.float()[:, None]
        else:  # gate: heads compete for a fixed total weight; uniform (1 each) at initialisation
            x = x * (self.num_heads * torch.softmax(head_gate.float(), dim=-1))[..., None]
        return x.to(heads.dtype)


def _head_rows(weight: torch.Tensor, heads: list[int], head_dim: int) -> torch.Tensor:
    """The rows of a [heads * head_dim, ...] projection weight (or bias) that belong to `heads`, in order."""
    per_head = weight.view(-1, head_dim, *weight.shape[1:])
    return per_head[heads].reshape(-1, *weight.shape[1:])
