"""bf16 storage: the reference every other format is measured against."""

from __future__ import annotations

import torch

from .base import KVFormat, QTensor, rows_and_dim


class BF16Format(KVFormat):
    name = "bf16"
    bits = 16

    def _quantize(self, x: torch.Tensor) -> QTensor:
        return QTensor(self.name, tuple(x.shape), x.dtype, x.to(torch.bfloat16))

    def _dequantize(self, q: QTensor) -> torch.Tensor:
        return q.payload

    def bytes_per_token(self, head_dim: int | None = None) -> float:
        return 2.0 * (head_dim or self.head_dim)

    def stored_nbytes(self, shape: tuple[int, ...]) -> int:
        rows, d = rows_and_dim(shape)
        return 2 * rows * d
