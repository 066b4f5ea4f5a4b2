"""The interface every KV storage format implements, the quantized tensor it returns, and its error."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import HydraheadError


class KVFormatError(HydraheadError, ValueError):
    pass


@dataclass
class QTensor:
    """What a format stores for a [..., T, D] tensor of keys or values.

    `payload` holds the element codes (packed two per byte for the 4-bit formats); `scales` holds
    everything else the decoder needs (block scales, zero points, norms, a tensor scale). The
    original shape and dtype travel along so that dequantize can restore both.
    """

    format: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    payload: torch.Tensor
    scales: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return self.shape[-2]

    @property
    def nbytes(self) -> int:
        """Bytes of every stored tensor; the shape and dtype are metadata and are not counted."""
        tensors = [self.payload, *self.scales.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


def rows_and_dim(shape: tuple[int, ...]) -> tuple[int, int]:
    """(stored rows = every leading index x tokens, head_dim) of a [..., T, D] shape."""
    return math.prod(shape[:-1]), shape[-1]


class KVFormat:
    """One way of storing keys or values of shape [..., T, D] (tokens x head_dim, any leading dims).

    Subclasses set `name` and `bits` (bits of one stored element, scales excluded), check their
    head_dim in `__init__` with `_need`, and implement `_quantize` (given a finite tensor of the right
    shape), `_dequantize` (any float dtype; the base casts back) and `bytes_per_token`.
    """

    name: ClassVar[str]
    bits: ClassVar[int]
    # scales holding one value per quantize call (per tensor or per leading index), not per token or token group:
    # a cache that packs many blocks together spreads them over their block's tokens when it reads a range
    block_scales: tuple[str, ...] = ()

    def __init__(self, head_dim: int):
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
            raise KVFormatError(f"{self.name} needs a positive integer head_dim, got {head_dim!r}")
        self.head_dim = head_dim

    def _need(self, ok: bool, what: str) -> None:
        if not ok:
            raise KVFormatError(f"{self.name} needs {what}, got {self.head_dim}")

    def quantize(self, x: torch.Tensor) -> QTensor:
        self._check_input(x)
        return self._quantize(x)

    def dequantize(self, q: QTensor) -> torch.Tensor:
        self._check_q(q)
        return self._dequantize(q).to(q.dtype)

    def dequantize_rows(self, q: QTensor, rows: torch.Tensor) -> torch.Tensor:
        """Only the stored rows `rows` decoded: float32 [n, D]. `rows` indexes q's rows (every leading index x
        token, flattened: row r of a [B, H, T, D] tensor is b, h, t with r = (b * H + h) * T + t). Sparse decoding
        reads the tokens it selected this way, without decoding the rest of their block."""
        return self.dequantize_at(q, torch.unravel_index(rows, q.shape[:-1]))

    def dequantize_at(self, q: QTensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The tokens at `index` (one index tensor per leading dim, then tokens, all of one shape [n]) decoded:
        float32 [n, D]. Indexing picks the rows in place, so a range of packed blocks is never copied whole."""
        self._check_q(q)
        return self._dequantize(self._pick(q, index)).float()

    def _pick(self, q: QTensor, index: tuple[torch.Tensor, ...]) -> QTensor:
        """q at `index`, as a QTensor of shape [n, D]. Every stored tensor here leads with q's [..., T] (one entry
        per token) or is a scalar; formats whose scales span tokens override `dequantize_at`."""

        def take(t: torch.Tensor) -> torch.Tensor:
            return t if t.dim() == 0 else t[index]

        scales = {name: take(t) for name, t in q.scales.items()}
        return QTensor(q.format, (index[0].numel(), q.shape[-1]), q.dtype, take(q.payload), scales)

    def key_query(self, query: torch.Tensor) -> torch.Tensor:
        """The query in the space `score_keys` decodes keys to (the identity here)."""
        return query

    def score_keys(self, keys: QTensor) -> torch.Tensor:
        """Float32 keys [..., T, D] such that key_query(q) @ score_keys(keys)^T == q @ dequantize(keys)^T. The fused
        decode path scores with them; a rotating format (tq4) rotates the query once instead of every key."""
        return self._dequantize(keys).float()

    def score_keys_at(self, q: QTensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """`score_keys` for the tokens at `index` only (as `dequantize_at`): float32 [n, D]. The same as
        `dequantize_at` wherever `key_query` is the identity; a format that rotates the query overrides both."""
        return self.dequantize_at(q, index)

    def _check_q(self, q: QTensor) -> None:
        if q.format != self.name:
            raise KVFormatError(f"cannot decode a {q.format} tensor with the {self.name} format")
        if q.shape[-1] != self.head_dim:
            raise KVFormatError(f"{self.name} was built for head_dim {self.head_dim}, the tensor has {q.shape[-1]}")

    def bytes_per_token(self, head_dim: int | None = None) -> float:
        """Stored bytes of one token of one head (keys or values, not both), scales and norms included.

        Per-tensor or per-head scalars are amortised over the sequence and counted as zero.
        """
        raise NotImplementedError

    def nbytes(self, q: QTensor) -> int:
        return q.nbytes

    def stored_nbytes(self, shape: tuple[int, ...]) -> int:
        """The exact bytes `quantize` stores for a tensor of `shape` [..., T, D]: what `QTensor.nbytes` reports,
        computed without quantizing anything (the head plan counts a cache's bytes with it)."""
        raise NotImplementedError

    def _quantize(self, x: torch.Tensor) -> QTensor:
        raise NotImplementedError

    def _dequantize(self, q: QTensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise KVFormatError(f"{self.name} quantizes floating-point tensors, got {getattr(x, 'dtype', type(x))}")
        if x.dim() < 2 or x.shape[-1] != self.head_dim:
            raise KVFormatError(
                f"{self.name} expects a [..., T, {self.head_dim}] tensor (tokens x head_dim), got shape {tuple(x.shape)}"
            )
        bad = ~torch.isfinite(x)
        if bad.any():
            # a single NaN would poison its whole block scale or norm, so refuse rather than store it
            where = bad.nonzero()
            nan = int(torch.isnan(x).sum())
            first = ", ".join(str(tuple(i)) for i in where[:3].tolist())
            more = f" and {len(where) - 3} more" if len(where) > 3 else ""
            raise KVFormatError(
                f"{self.name}: input of shape {tuple(x.shape)} has {len(where)} non-finite values "
                f"({nan} NaN, {len(where) - nan} inf) at index {first}{more}"
            )

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"
