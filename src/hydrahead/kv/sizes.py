"""The exact KV bytes of a head plan with per-head formats, counted the way the cache stores them.

Each layer keeps one quantized layer per group of cached KV heads with the same storage (`HeadPlan.kv_groups`):
its first `sink` tokens and its recent tokens in the model's dtype, everything between in blocks of
`block_size` tokens, each block of a group one QTensor [B, heads, block_size, D] for keys and one for values.
The recent part holds `window` to `window + block_size - 1` tokens once the first block has gone, because
blocks leave it whole. These functions repeat that arithmetic; tests hold them to `cache.nbytes()`.
"""

from __future__ import annotations

from fractions import Fraction

from ..plan import HeadKV, HeadPlan, dtype_bytes
from .spec import parse_cache_spec


def split_tokens(tokens: int, head: HeadKV) -> tuple[int, int, int]:
    """(sink tokens, quantized blocks, recent tokens) of a head that has seen `tokens` tokens."""
    sink = min(tokens, head.sink)
    rest = tokens - sink
    blocks = max(0, (rest - head.window) // head.block_size)
    return sink, blocks, rest - blocks * head.block_size


def block_nbytes(head: HeadKV, batch_size: int, num_heads: int, head_dim: int) -> int:
    """Bytes of one quantized block of a group: keys and values, every scale included."""
    keys, values = parse_cache_spec(head.spec)
    shape = (batch_size, num_heads, head.block_size, head_dim)
    return keys.build(head_dim).stored_nbytes(shape) + values.build(head_dim).stored_nbytes(shape)


def plan_kv_bytes(plan: HeadPlan, tokens: int, batch_size: int = 1, dtype="bfloat16") -> int:
    """What a cache made from `plan` holds after `tokens` tokens of `batch_size` rows (see `HeadPlan.kv_bytes`)."""
    d = plan.shape.head_dim
    total = 0
    for layer in range(plan.shape.num_layers):
        for head, positions in plan.kv_groups(layer):
            sink, blocks, recent = split_tokens(tokens, head)
            total += (sink + recent) * batch_size * len(positions) * 2 * d * dtype_bytes(dtype)
            total += blocks * block_nbytes(head, batch_size, len(positions), d)
    return total


def plan_bytes_per_token(plan: HeadPlan) -> float:
    """The steady-state bytes of one more token (batch 1): one block of every group / its block_size."""
    d = plan.shape.head_dim
    total = Fraction(0)
    for layer in range(plan.shape.num_layers):
        for head, positions in plan.kv_groups(layer):
            total += Fraction(block_nbytes(head, 1, len(positions), d), head.block_size)
    return float(total)
