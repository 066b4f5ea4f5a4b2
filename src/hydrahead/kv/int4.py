"""Asymmetric 4-bit integers with a float16 scale and zero point per group of 32 (KIVI-style)."""

from __future__ import annotations

import math

import torch

from .base import KVFormat, KVFormatError, QTensor, rows_and_dim
from .fp_codes import pack_nibbles, unpack_nibbles

AXES = ("token", "channel")
LEVELS = 15


class Int4Format(KVFormat):
    """x ~ zero + scale * code, code in 0..15, zero = group min, scale = (max - min) / 15.

    axis "token" groups `group_size` channels of one token (for values); axis "channel" groups
    `group_size` consecutive tokens of one channel (for keys, whose outliers sit in fixed channels,
    so each outlier channel gets its own range). A last partial token group is quantized on its own.
    Scale and zero are stored in float16 and the codes are chosen against the stored values.
    """

    name = "int4"
    bits = 4

    def __init__(self, head_dim: int, axis: str = "token", group_size: int = 32):
        super().__init__(head_dim)
        if axis not in AXES:
            raise KVFormatError(f"int4 axis must be one of {AXES}, got {axis!r}")
        if group_size < 1:
            raise KVFormatError(f"int4 group_size must be positive, got {group_size}")
        self.axis = axis
        self.group_size = group_size
        self._need(head_dim % 2 == 0, "an even head_dim to pack two codes per byte")
        if axis == "token":
            self._need(head_dim % group_size == 0, f"head_dim divisible by {group_size} for token-axis groups")

    def _groups(self, x: torch.Tensor) -> torch.Tensor:
        """[..., n, G, D] groups along tokens, or [..., T, D/G, G] along channels; the group is dim -2 / -1."""
        g = self.group_size
        if self.axis == "token":
            return x.reshape(*x.shape[:-1], self.head_dim // g, g)
        pad = -x.shape[-2] % g
        if pad:
            # repeat the last token so the partial group's min and max are its own
            x = torch.cat((x, x[..., -1:, :].expand(*x.shape[:-2], pad, x.shape[-1])), dim=-2)
        return x.reshape(*x.shape[:-2], x.shape[-2] // g, g, x.shape[-1])

    @property
    def _group_dim(self) -> int:
        return -1 if self.axis == "token" else -2

    def _quantize(self, x: torch.Tensor) -> QTensor:
        groups = self._groups(x.float())
        lo = groups.amin(self._group_dim, keepdim=True)
        hi = groups.amax(self._group_dim, keepdim=True)
        zero, scale = lo.half(), ((hi - lo) / LEVELS).half()
        if not (torch.isfinite(zero).all() and torch.isfinite(scale).all()):
            raise KVFormatError(f"int4 scales overflow float16: input values span {float(lo.min())}..{float(hi.max())}")
        s = scale.float()
        codes = ((groups - zero.float()) / torch.where(s > 0, s, 1.0)).round().clamp(0, LEVELS).to(torch.uint8)
        codes = self._ungroup(codes, x.shape[-2])
        scales = {"scale": scale.squeeze(self._group_dim), "zero": zero.squeeze(self._group_dim)}
        return QTensor(self.name, tuple(x.shape), x.dtype, pack_nibbles(codes), scales)

    def _ungroup(self, groups: torch.Tensor, tokens: int) -> torch.Tensor:
        if self.axis == "token":
            return groups.flatten(-2)
        return groups.flatten(-3, -2)[..., :tokens, :]

    def dequantize_at(self, q: QTensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.axis == "token":
            return super().dequantize_at(q, index)
        self._check_q(q)
        codes = unpack_nibbles(q.payload[index]).float()  # [n, D]
        group = (*index[:-1], index[-1] // self.group_size)  # the token group of each picked token
        return q.scales["zero"][group].float() + q.scales["scale"][group].float() * codes

    def _dequantize(self, q: QTensor) -> torch.Tensor:
        codes = self._groups(unpack_nibbles(q.payload).float())
        scale = q.scales["scale"].float().unsqueeze(self._group_dim)
        zero = q.scales["zero"].float().unsqueeze(self._group_dim)
        return self._ungroup(zero + scale * codes, q.num_tokens)

    def bytes_per_token(self, head_dim: int | None = None) -> float:
        d = head_dim or self.head_dim
        return d / 2 + 2 * 2 * d / self.group_size  # codes + float16 scale and zero per group

    def stored_nbytes(self, shape: tuple[int, ...]) -> int:
        """Packed codes, plus a float16 scale and zero per group (a last partial token group counts whole)."""
        rows, d = rows_and_dim(shape)
        if self.axis == "token":
            groups = rows * (d // self.group_size)
        else:
            groups = math.prod(shape[:-2]) * -(-shape[-2] // self.group_size) * d
        return rows * d // 2 + 2 * 2 * groups
