"""NVFP4: E2M1 elements with one E4M3 scale per 16 along head_dim, times one float32 tensor scale."""

from __future__ import annotations

import torch

from .base import KVFormat, QTensor, rows_and_dim
from .fp_codes import (
    E2M1_MAX,
    E4M3_MAX,
    e2m1_decode,
    e2m1_encode,
    e4m3_decode,
    e4m3_encode,
    pack_nibbles,
    unpack_nibbles,
)

BLOCK = 16


class NVFP4Format(KVFormat):
    """global = amax / (6 * 448); block scale = e4m3(amax_block / 6 / global); x / (block * global) -> E2M1.

    The tensor scale maps the largest block scale onto E4M3's top, so the 3-bit-mantissa block
    scales keep their precision whatever the magnitude of the input. A block whose scale rounds to
    zero (amax_block below ~2e-6 of amax) decodes as zeros.
    """

    name = "nvfp4"
    bits = 4
    block_scales = ("tensor_scale",)

    def __init__(self, head_dim: int):
        super().__init__(head_dim)
        self._need(head_dim % BLOCK == 0, f"head_dim divisible by {BLOCK}")

    def _quantize(self, x: torch.Tensor) -> QTensor:
        blocks = x.float().reshape(*x.shape[:-1], self.head_dim // BLOCK, BLOCK)  # [..., T, D/16, 16]
        amax = blocks.abs().amax() if blocks.numel() else blocks.new_zeros(())  # amax refuses empty input
        tensor_scale = amax / (E2M1_MAX * E4M3_MAX)
        tensor_scale = torch.where(tensor_scale > 0, tensor_scale, torch.ones_like(tensor_scale))  # []
        scale_codes = e4m3_encode(blocks.abs().amax(-1) / E2M1_MAX / tensor_scale)  # [..., T, D/16]
        step = (e4m3_decode(scale_codes) * tensor_scale).unsqueeze(-1)
        scaled = torch.where(step > 0, blocks / torch.where(step > 0, step, 1.0), 0.0)
        payload = pack_nibbles(e2m1_encode(scaled).reshape(x.shape))
        return QTensor(self.name, tuple(x.shape), x.dtype, payload, {"scale": scale_codes, "tensor_scale": tensor_scale})

    def _dequantize(self, q: QTensor) -> torch.Tensor:
        values = e2m1_decode(unpack_nibbles(q.payload))
        blocks = values.reshape(*q.shape[:-1], self.head_dim // BLOCK, BLOCK)
        step = e4m3_decode(q.scales["scale"]) * q.scales["tensor_scale"]
        return (blocks * step.unsqueeze(-1)).reshape(q.shape)

    def bytes_per_token(self, head_dim: int | None = None) -> float:
        """E2M1 codes and E4M3 block scales; the float32 tensor scale is amortised to zero."""
        d = head_dim or self.head_dim
        return d / 2 + d / BLOCK

    def stored_nbytes(self, shape: tuple[int, ...]) -> int:
        rows, d = rows_and_dim(shape)
        return rows * (d // 2 + d // BLOCK) + 4  # codes, one E4M3 byte per 16, one float32 tensor scale
