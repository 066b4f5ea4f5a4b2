"""Fast Walsh-Hadamard transform and the random-sign rotation built on it, in plain PyTorch."""

from __future__ import annotations

import math

import torch

from .base import KVFormatError


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def fwht(x: torch.Tensor) -> torch.Tensor:
    """H x / sqrt(d) over the last dim (d a power of two), H the Sylvester Hadamard matrix.

    log2(d) butterfly stages of O(d) each instead of a d x d matmul. With the 1/sqrt(d) factor the
    transform is orthonormal and its own inverse.
    """
    d = x.shape[-1]
    if not is_power_of_two(d):
        raise KVFormatError(f"the Walsh-Hadamard transform needs a power-of-two last dim, got {d}")
    lead = x.shape[:-1]
    h = 1
    while h < d:
        pairs = x.reshape(*lead, d // (2 * h), 2, h)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, d)
        h *= 2
    return x * (1.0 / math.sqrt(d))


class RandomSignRotation:
    """x -> H diag(s) x / sqrt(d) with seeded random signs s: orthonormal, so q.k is unchanged.

    The signs make the rotation random enough that a few large channels are spread over all
    coordinates, while H keeps it O(d log d).
    """

    def __init__(self, dim: int, seed: int = 0):
        if not is_power_of_two(dim):
            raise KVFormatError(f"a Walsh-Hadamard rotation needs a power-of-two dim, got {dim}")
        self.dim = dim
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        self.signs = torch.randint(0, 2, (dim,), generator=generator).float() * 2 - 1  # [D]

    def _signs(self, x: torch.Tensor) -> torch.Tensor:
        return self.signs.to(device=x.device, dtype=x.dtype)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        return fwht(x * self._signs(x))

    def unrotate(self, y: torch.Tensor) -> torch.Tensor:
        return fwht(y) * self._signs(y)

    def __repr__(self) -> str:
        return f"RandomSignRotation(dim={self.dim}, seed={self.seed})"
