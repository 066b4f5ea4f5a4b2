"""MXFP4 (OCP Microscaling): E2M1 elements sharing one power-of-two UE8M0 scale per 32 along head_dim."""

from __future__ import annotations

import torch

from .base import KVFormat, QTensor, rows_and_dim
from .fp_codes import (
    E2M1_EMAX,
    UE8M0_BIAS,
    e2m1_decode,
    e2m1_encode,
    pack_nibbles,
    ue8m0_decode,
    ue8m0_from_exponent,
    unpack_nibbles,
)

BLOCK = 32


class MXFP4Format(KVFormat):
    """Per block: e = floor(log2(amax)) - 2, elements x / 2**e rounded to E2M1 with saturation.

    As in the OCP MX spec, the scale puts amax in [4, 8), so the top of a block can clip to 6; that
    is the cost of a scale that is a bare exponent. An all-zero block gets the smallest scale.
    """

    name = "mxfp4"
    bits = 4

    def __init__(self, head_dim: int):
        super().__init__(head_dim)
        self._need(head_dim % BLOCK == 0, f"head_dim divisible by {BLOCK}")

    def _quantize(self, x: torch.Tensor) -> QTensor:
        blocks = x.float().reshape(*x.shape[:-1], self.head_dim // BLOCK, BLOCK)  # [..., T, D/32, 32]
        amax = blocks.abs().amax(-1)
        _, exponent = torch.frexp(amax)  # amax = m * 2**exponent with m in [0.5, 1): floor(log2) = exponent - 1
        e = torch.where(amax > 0, exponent - 1 - E2M1_EMAX, -UE8M0_BIAS).clamp(-UE8M0_BIAS, UE8M0_BIAS)
        scale_codes = ue8m0_from_exponent(e)  # [..., T, D/32]
        codes = e2m1_encode(blocks / ue8m0_decode(scale_codes).unsqueeze(-1))
        payload = pack_nibbles(codes.reshape(x.shape))
        return QTensor(self.name, tuple(x.shape), x.dtype, payload, {"scale": scale_codes})

    def _dequantize(self, q: QTensor) -> torch.Tensor:
        values = e2m1_decode(unpack_nibbles(q.payload))
        blocks = values.reshape(*q.shape[:-1], self.head_dim // BLOCK, BLOCK)
        return (blocks * ue8m0_decode(q.scales["scale"]).unsqueeze(-1)).reshape(q.shape)

    def bytes_per_token(self, head_dim: int | None = None) -> float:
        d = head_dim or self.head_dim
        return d / 2 + d / BLOCK

    def stored_nbytes(self, shape: tuple[int, ...]) -> int:
        rows, d = rows_and_dim(shape)
        return rows * (d // 2 + d // BLOCK)  # packed E2M1 codes and one UE8M0 byte per 32
