"""Bit-level codes of the small float formats (E2M1, E4M3, UE8M0) and packing of sub-byte codes.

Codes are uint8 tensors holding the format's bit pattern in their low bits; values are float32.
`ml_dtypes` (float4_e2m1fn, float8_e4m3fn, float8_e8m0fnu) is the oracle these are tested against;
where we differ from it on purpose it is said below.
"""

from __future__ import annotations

import torch

from .base import KVFormatError

E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MAX = 6.0
E2M1_EMAX = 2  # 6 = 1.5 * 2**2: the MX shared exponent leaves this much headroom
# the point halfway between consecutive magnitudes; a value on one is a tie
_E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)

E4M3_MAX = 448.0
UE8M0_BIAS = 127
UE8M0_NAN = 255


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """FP4 (E2M1) codes: sign in bit 3, magnitude index 0..7; nearest value, ties to even, saturating at 6.

    E2M1 has no NaN, so NaN is refused (ml_dtypes silently maps it to -0).
    """
    x = x.float()
    if torch.isnan(x).any():
        raise KVFormatError(f"E2M1 has no NaN code; the input holds {int(torch.isnan(x).sum())} NaN")
    mag = x.abs().contiguous()  # bucketize copies a strided input (a view of a window) on every call
    mid = torch.tensor(_E2M1_MIDPOINTS, device=x.device)
    down = torch.bucketize(mag, mid)
    up = torch.bucketize(mag, mid, right=True)
    # they differ only on a midpoint; an odd `down` means the even neighbour is `up`
    code = torch.where((down != up) & (down % 2 == 1), up, down)
    return code.to(torch.uint8) | (torch.signbit(x).to(torch.uint8) << 3)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), device=codes.device)
    return table[codes.long()]


def e4m3_encode(x: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn codes, nearest-even; finite overflow and +-inf saturate to +-448, NaN stays NaN.

    Saturating is what scales need: ml_dtypes would turn anything past 464 into NaN.
    """
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(torch.uint8)


def e4m3_decode(codes: torch.Tensor) -> torch.Tensor:
    return codes.view(torch.float8_e4m3fn).float()


def ue8m0_from_exponent(e: torch.Tensor) -> torch.Tensor:
    """The UE8M0 byte of the scale 2**e (byte = 127 + e, e in [-127, 127])."""
    if e.numel() and (e.min() < -UE8M0_BIAS or e.max() > UE8M0_BIAS):
        raise KVFormatError(f"UE8M0 holds exponents -127..127, got {int(e.min())}..{int(e.max())}")
    return (e.to(torch.int32) + UE8M0_BIAS).to(torch.uint8)


def ue8m0_encode(x: torch.Tensor) -> torch.Tensor:
    """UE8M0 byte of the representable power of two nearest to x (OCP MX v1.0: E8M0 has no mantissa, no sign
    and no zero, exponents -127..127, byte 255 is NaN; conversion rounds to nearest).

    Ties (1.5 * 2**e) go up; everything in (0, 2**-127] becomes 2**-127, the smallest value; what E8M0
    cannot hold (zero, negatives, inf, NaN, 1.5 * 2**127 and above) becomes the NaN byte. Float32 subnormals
    round by value like every other input (ml_dtypes before 0.7 rounded their raw bits, sending values just
    above 2**-127 up to 2**-126).
    """
    x = x.float()
    mantissa, exponent = torch.frexp(x)  # x = mantissa * 2**exponent, mantissa in [0.5, 1), subnormals too
    e = exponent - 1 + (mantissa >= 0.75).to(torch.int32)
    ok = (x > 0) & torch.isfinite(x) & (e <= UE8M0_BIAS)
    code = e.clamp(min=-UE8M0_BIAS) + UE8M0_BIAS
    return torch.where(ok, code, UE8M0_NAN).to(torch.uint8)


def ue8m0_decode(codes: torch.Tensor) -> torch.Tensor:
    """2**(byte - 127) as float32, built from its bits so that it is exact (byte 0 is a subnormal)."""
    c = codes.to(torch.int32)
    bits = torch.where(c == 0, 1 << 22, c << 23)
    bits = torch.where(c == UE8M0_NAN, 0x7FC00000, bits)
    return bits.view(torch.float32)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte along the last dim: element 2i in the low nibble, 2i+1 in the high."""
    if codes.dtype != torch.uint8:
        raise KVFormatError(f"nibble codes must be uint8, got {codes.dtype}")
    if codes.shape[-1] % 2:
        raise KVFormatError(f"packing two codes per byte needs an even last dim, got shape {tuple(codes.shape)}")
    if codes.numel() and codes.max() > 15:
        raise KVFormatError(f"4-bit codes must be 0..15, got {int(codes.max())}")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    codes = torch.stack((packed & 0x0F, packed >> 4), dim=-1)
    return codes.reshape(*packed.shape[:-1], 2 * packed.shape[-1])


_BIT_WEIGHTS = tuple(1 << i for i in range(8))


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Eight booleans per byte along the last dim, element 8i in the lowest bit."""
    if bits.shape[-1] % 8:
        raise KVFormatError(f"packing eight bits per byte needs a last dim divisible by 8, got shape {tuple(bits.shape)}")
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.int32, device=bits.device)
    grouped = bits.reshape(*bits.shape[:-1], bits.shape[-1] // 8, 8).to(torch.int32)
    return (grouped * weights).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) & weights) != 0
    return bits.reshape(*packed.shape[:-1], 8 * packed.shape[-1])
