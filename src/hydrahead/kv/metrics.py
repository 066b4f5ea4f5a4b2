"""Error figures of a KV format on captured or synthetic keys, values and queries (benchmarks/kv_error.py)."""

from __future__ import annotations

import torch

from .base import KVFormat


def fake_quantize(x: torch.Tensor, fmt: KVFormat, block_size: int = 64) -> torch.Tensor:
    """x [..., T, D] quantized and decoded in blocks of `block_size` tokens, as the cache stores it."""
    parts = [fmt.dequantize(fmt.quantize(x[..., i:i + block_size, :])) for i in range(0, x.shape[-2], block_size)]
    return torch.cat(parts, dim=-2)


def relative_mse(x: torch.Tensor, approx: torch.Tensor) -> float:
    """||approx - x||^2 / ||x||^2 over the whole tensor."""
    x, approx = x.double(), approx.double()
    return float(((approx - x) ** 2).sum() / (x**2).sum().clamp_min(1e-300))


def attention_weights(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Causal softmax weights of the last Q queries over T keys: query [B, Hq, Q, D], keys [B, H, T, D]
    (H divides Hq, GQA) -> float64 [B, Hq, Q, T]."""
    _, Hq, Q, D = query.shape
    keys = keys.repeat_interleave(Hq // keys.shape[1], dim=1)
    s = query.double() @ keys.double().mT / D**0.5
    T = keys.shape[-2]
    visible = torch.arange(T)[None, :] <= torch.arange(T - Q, T)[:, None]  # [Q, T]
    return torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1)


def attention_errors(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, keys_hat: torch.Tensor,
                     values_hat: torch.Tensor, ks: tuple[int, ...] = (8, 32)) -> dict[str, float]:
    """Relative error of the attention output ||o_hat - o|| / ||o||, and the mean overlap of the top-k
    attended keys per (query, head) between exact and quantized weights, for each k."""
    w, w_hat = attention_weights(query, keys), attention_weights(query, keys_hat)
    group = query.shape[1] // values.shape[1]
    out = w @ values.double().repeat_interleave(group, dim=1)
    out_hat = w_hat @ values_hat.double().repeat_interleave(group, dim=1)
    result = {"attn_out_rel_err": float((out_hat - out).norm() / out.norm().clamp_min(1e-300))}
    for k in ks:
        k = min(k, w.shape[-1])
        exact = w.topk(k, dim=-1).indices  # [B, Hq, Q, k]
        approx = w_hat.topk(k, dim=-1).indices
        hits = (exact[..., :, None] == approx[..., None, :]).any(-1).double().mean()
        result[f"top{k}_overlap"] = float(hits)
    return result
