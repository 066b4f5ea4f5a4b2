"""TurboQuant-style 4-bit codebook after a random Walsh-Hadamard rotation: UltraQuant's quality anchor."""

from __future__ import annotations

import math

import torch

from .base import KVFormat, KVFormatError, QTensor, rows_and_dim
from .codebook import lloyd_max_gaussian
from .fp_codes import pack_bits, pack_nibbles, unpack_bits, unpack_nibbles
from .hadamard import RandomSignRotation, is_power_of_two

NORM_DTYPES = {"float16": torch.float16, "float32": torch.float32}
LEVELS = 16
# E|<s, r>| = sqrt(2/pi) |r| for s ~ N(0, I): this factor undoes it and makes the sketch unbiased
QJL_FACTOR = math.sqrt(math.pi / 2)
# keeps the QJL projection's random stream apart from the rotation's, which uses `seed` itself
_QJL_SEED_OFFSET = 0x9E3779B9


class TQ4Format(KVFormat):
    """x ~ |x| R^T c[code]: rotate x / |x|, quantize each coordinate with the 16-level Lloyd-Max codebook
    of N(0, 1/d), and store the packed codes plus the norm |x| in `norm_dtype` (float16 by default).

    After the random rotation every coordinate of a unit vector is close to N(0, 1/d) whatever the
    channel outliers of the input, so one fixed codebook serves keys and values alike; the relative
    MSE is about 0.0095.

    qjl=True is an ablation, off by default: it adds a 1-bit QJL sketch of the residual
    r = u - c[code] (u the rotated unit vector), sign(S r) for a seeded Gaussian S [m, d] with
    m = qjl_dim (default d), packed 8 per byte, and |r| in `norm_dtype`. Decoding adds
    sqrt(pi/2) / m * |r| * S^T sign(S r), which makes every q.k unbiased over S at the price of
    variance (the reconstruction MSE rises about pi/2-fold); UltraQuant drops it for attention. The
    sketch costs m/8 + 2 bytes on top of the 4-bit codes: TurboQuant proper would give the codebook
    one bit less to keep the total at 4 bits, which is not done here.
    """

    name = "tq4"
    bits = 4

    def __init__(self, head_dim: int, seed: int = 0, norm_dtype: str = "float16", qjl: bool = False,
                 qjl_dim: int | None = None):
        super().__init__(head_dim)
        self._need(is_power_of_two(head_dim), "a power-of-two head_dim for the Walsh-Hadamard rotation")
        if norm_dtype not in NORM_DTYPES:
            raise KVFormatError(f"tq4 norm_dtype must be one of {sorted(NORM_DTYPES)}, got {norm_dtype!r}")
        self.seed = seed
        self.norm_dtype = norm_dtype
        self.qjl = bool(qjl)
        if qjl_dim is not None and not self.qjl:
            raise KVFormatError("tq4 qjl_dim only applies with qjl=True")
        self.qjl_dim = (qjl_dim or head_dim) if self.qjl else None
        if self.qjl and (self.qjl_dim < 8 or self.qjl_dim % 8):
            raise KVFormatError(f"tq4 qjl_dim must be a positive multiple of 8, got {self.qjl_dim}")
        self._rotation = RandomSignRotation(head_dim, seed)
        centroids, boundaries, _ = lloyd_max_gaussian(LEVELS)
        self._centroids = torch.tensor(centroids, dtype=torch.float32) / math.sqrt(head_dim)  # [16]
        self._boundaries = torch.tensor(boundaries, dtype=torch.float32) / math.sqrt(head_dim)  # [15]
        if self.qjl:
            generator = torch.Generator().manual_seed(seed + _QJL_SEED_OFFSET)
            self._projection = torch.randn(self.qjl_dim, head_dim, generator=generator)  # [m, D]

    @property
    def codebook(self) -> torch.Tensor:
        """The 16 code values (float32, for unit vectors in the rotated space): code c decodes to codebook[c]."""
        return self._centroids

    @property
    def rotation(self) -> RandomSignRotation:
        """The rotation codes live in: rotate a query with it to score keys without unrotating them."""
        return self._rotation

    def _quantize(self, x: torch.Tensor) -> QTensor:
        x32 = x.float()
        norm = torch.linalg.vector_norm(x32, dim=-1)  # [..., T]
        stored_norm = norm.to(NORM_DTYPES[self.norm_dtype])
        if not torch.isfinite(stored_norm).all():
            raise KVFormatError(
                f"tq4: vector norms up to {float(norm.max()):.4g} overflow {self.norm_dtype}; use norm_dtype='float32'"
            )
        unit = x32 / torch.where(norm > 0, norm, 1.0).unsqueeze(-1)
        u = self._rotation.rotate(unit)  # [..., T, D]
        codes = torch.bucketize(u, self._boundaries.to(u.device)).to(torch.uint8)
        scales = {"norm": stored_norm}
        if self.qjl:
            residual = u - self._centroids.to(u.device)[codes.long()]
            scales["qjl_signs"] = pack_bits(residual @ self._projection.to(u.device).mT >= 0)  # [..., T, m/8]
            scales["residual_norm"] = torch.linalg.vector_norm(residual, dim=-1).to(stored_norm.dtype)
        return QTensor(self.name, tuple(x.shape), x.dtype, pack_nibbles(codes), scales)

    def _codebook_values(self, q: QTensor) -> torch.Tensor:
        return self._centroids.to(q.payload.device)[unpack_nibbles(q.payload).long()]  # [..., T, D], rotated space

    def _qjl_parts(self, q: QTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(signs +-1 [..., T, m], weights sqrt(pi/2) |r| / m [..., T], S [m, D])."""
        signs = unpack_bits(q.scales["qjl_signs"]).float() * 2 - 1
        weights = q.scales["residual_norm"].float() * (QJL_FACTOR / self.qjl_dim)
        return signs, weights, self._projection.to(signs.device)

    def _dequantize(self, q: QTensor) -> torch.Tensor:
        u = self._codebook_values(q)
        if self.qjl:
            signs, weights, projection = self._qjl_parts(q)
            u = u + weights.unsqueeze(-1) * (signs @ projection)
        return self._rotation.unrotate(u) * q.scales["norm"].float().unsqueeze(-1)

    def scores(self, query: torch.Tensor, keys: QTensor) -> torch.Tensor:
        """q.k for every query [..., Tq, D] and stored key [..., T, D] -> float32 [..., Tq, T].

        The decode path for attention: the query is rotated once instead of unrotating every key.
        With qjl the residual term is sqrt(pi/2)/m |r| <S q_rot, sign(S r)>, the unbiased estimator;
        the result equals query @ dequantize(keys)^T up to rounding.
        """
        q_rot = self._rotation.rotate(query.float())
        out = q_rot @ self._codebook_values(keys).mT
        if self.qjl:
            signs, weights, projection = self._qjl_parts(keys)
            out = out + ((q_rot @ projection.mT) @ signs.mT) * weights.unsqueeze(-2)
        return out * keys.scales["norm"].float().unsqueeze(-2)

    def key_query(self, query: torch.Tensor) -> torch.Tensor:
        return query if self.qjl else self._rotation.rotate(query.float())

    def score_keys(self, keys: QTensor) -> torch.Tensor:
        if self.qjl:
            return super().score_keys(keys)
        # codebook values in the rotated space times the norm: the query is rotated instead of every key unrotated
        return self._codebook_values(keys) * keys.scales["norm"].float().unsqueeze(-1)

    def score_keys_at(self, q: QTensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.qjl:
            return super().score_keys_at(q, index)
        self._check_q(q)
        return self.score_keys(self._pick(q, index))  # no inverse rotation of the picked keys

    def bytes_per_token(self, head_dim: int | None = None) -> float:
        d = head_dim or self.head_dim
        norm_bytes = NORM_DTYPES[self.norm_dtype].itemsize
        sketch = (self.qjl_dim or d) / 8 + norm_bytes if self.qjl else 0
        return d / 2 + norm_bytes + sketch

    def stored_nbytes(self, shape: tuple[int, ...]) -> int:
        rows, d = rows_and_dim(shape)
        norm_bytes = NORM_DTYPES[self.norm_dtype].itemsize
        sketch = self.qjl_dim // 8 + norm_bytes if self.qjl else 0
        return rows * (d // 2 + norm_bytes + sketch)
