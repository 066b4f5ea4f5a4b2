"""The native kernels for tensors in the model's dtype (`dense_decode.c`): a decode step's attention over keys and
values as stored, and the weights' matrix-vector products. Each returns None where it does not take a call (another
dtype or device, too many rows, a layout it cannot read, the kernel off or not built); the caller then runs PyTorch.
"""

from __future__ import annotations

import functools

import torch

from . import MAX_ROWS, _over_threads, _ready
from . import available as _available

DTYPES = {torch.float32: 0, torch.bfloat16: 1}
MAX_DIM = 256  # dense_decode.c's MAX_DIM


def _kernels():
    from . import _library as library  # set by the build, on the first available()

    return library


def attention(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor | None:
    """softmax(q k^T * scaling) v with no mask: q [B, Hk, R, D] (unscaled, any float dtype: a bfloat16 model's
    queries stay exact where the kernel rounds them to bfloat16), key and value [B, Hk, T, D] in float32 or
    bfloat16, channels contiguous (a view of a longer buffer is fine) -> float32 [B, Hk, R, D]; None where the
    kernel does not take the call."""
    B, H, R, D = q.shape
    T = key.shape[2]
    if not (key.dtype in DTYPES and value.dtype == key.dtype and key.shape == value.shape and D <= MAX_DIM and T > 0
            and key.stride(-1) == 1 and value.stride(-1) == 1 and _ready(R, q.device)):
        return None
    q = q.float().contiguous()
    strides = torch.tensor([*key.stride()[:3], *value.stride()[:3]], dtype=torch.int64)
    scores = q.new_empty(B, H, R, T)
    out = q.new_empty(B, H, R, D)
    run = functools.partial(_kernels().hh_dense_attention, B, H, R, D, T, DTYPES[key.dtype], scaling, q.data_ptr(),
                            key.data_ptr(), value.data_ptr(), strides.data_ptr(), scores.data_ptr(), out.data_ptr())
    _over_threads(run, B * H, T)
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """torch.nn.functional.linear for a decode step: x [..., K] with at most MAX_ROWS rows, in the weight's dtype
    (float32 or bfloat16), weight [N, K] contiguous -> [..., N] in that dtype; None where the kernel does not take
    the call (more rows, another dtype or device, or autograd would need the product)."""
    rows = x.numel() // max(x.shape[-1], 1)
    if not (weight.dtype in DTYPES and x.dtype == weight.dtype and weight.dim() == 2 and weight.is_contiguous()
            and x.shape[-1] == weight.shape[1] and 0 < rows <= MAX_ROWS and x.device == weight.device
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and _ready(1, weight.device)):
        return None
    N, K = weight.shape
    flat = x.reshape(rows, K).contiguous()
    y = torch.empty(rows, N, dtype=torch.float32, device=x.device)
    run = functools.partial(_kernels().hh_linear, rows, N, K, DTYPES[weight.dtype], flat.data_ptr(),
                            weight.data_ptr(), y.data_ptr())
    _over_threads(run, N, K * rows)
    if bias is not None:
        y += bias.float()
    return y.to(weight.dtype).view(*x.shape[:-1], N)


def bf16_dot_product() -> bool:
    """Whether bfloat16 products run on the CPU's AVX512-BF16 dot-product instruction here (else widened by a shift)."""
    return _available()[0] and bool(_kernels().hh_linear_bf16_dot())
