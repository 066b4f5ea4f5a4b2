"""FP8 (E4M3) storage with an optional per-tensor or per-head scale: the deployment baseline (vLLM's FP8 KV)."""

from __future__ import annotations

import math

import torch

from .base import KVFormat, KVFormatError, QTensor, rows_and_dim
from .fp_codes import E4M3_MAX, e4m3_encode

SCALES = ("tensor", "head", "none")


class FP8Format(KVFormat):
    """x / s rounded to float8_e4m3fn (saturating), s = amax / 448 in float32.

    scale "tensor": one s for the whole input; "head": one per leading index (amax over tokens and
    head_dim); "none": s = 1, as vLLM does without calibrated scales, so values past 448 saturate.
    """

    name = "fp8"
    bits = 8

    def __init__(self, head_dim: int, scale: str = "tensor"):
        super().__init__(head_dim)
        if scale not in SCALES:
            raise KVFormatError(f"fp8 scale must be one of {SCALES}, got {scale!r}")
        self.scale = scale

    @property
    def block_scales(self) -> tuple[str, ...]:
        return ("scale",) if self.scale != "none" else ()

    def _quantize(self, x: torch.Tensor) -> QTensor:
        x32 = x.float()
        scales = {}
        if self.scale != "none":
            # amax refuses empty reductions; zero tokens get the neutral scale
            if self.scale == "head":
                empty = x32.shape[-2] == 0
                amax = x32.new_zeros(*x32.shape[:-2], 1, 1) if empty else x32.abs().amax(dim=(-2, -1), keepdim=True)
            else:
                amax = x32.abs().amax() if x32.numel() else x32.new_zeros(())
            s = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))  # [] or [..., 1, 1]
            x32 = x32 / s
            scales["scale"] = s
        payload = e4m3_encode(x32).view(torch.float8_e4m3fn)
        return QTensor(self.name, tuple(x.shape), x.dtype, payload, scales)

    def _dequantize(self, q: QTensor) -> torch.Tensor:
        x = q.payload.float()
        return x * q.scales["scale"] if "scale" in q.scales else x

    def dequantize_at(self, q: QTensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        scale = q.scales.get("scale")
        if scale is None or scale.dim() == 0 or scale.shape[-2] == q.num_tokens:
            return super().dequantize_at(q, index)  # no scale, one scalar, or one per token (packed blocks)
        self._check_q(q)
        head = scale[(*index[:-1], torch.zeros_like(index[-1]))]  # [n, 1]: one scale per leading index
        return q.payload[index].float() * head.reshape(-1, 1)

    def bytes_per_token(self, head_dim: int | None = None) -> float:
        return 1.0 * (head_dim or self.head_dim)

    def stored_nbytes(self, shape: tuple[int, ...]) -> int:
        """One byte per element, plus a float32 scale: one per tensor, or one per leading index ("head")."""
        rows, d = rows_and_dim(shape)
        scales = {"tensor": 1, "head": math.prod(shape[:-2]), "none": 0}[self.scale]
        return rows * d + 4 * scales
