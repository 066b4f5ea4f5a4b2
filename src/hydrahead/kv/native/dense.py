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


def attention(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, *,
              heads: list[int] | None = None, index: torch.Tensor | None = None, keep: torch.Tensor | None = None,
              with_scores: bool = False):
    """softmax(q k^T * scaling) v for a decode step, over keys and values as stored (a view of a longer buffer is
    fine): q [B, H, R, D] (unscaled, any float dtype: a bfloat16 model's queries stay exact where the kernel rounds
    them to bfloat16); key and value [B, Hk, N, D] in float32 or bfloat16, channels contiguous.

    Query head slot h reads KV head heads[h] (default: H == Hk, slot h reads head h); index [B, H, T] (int64) lists
    the tokens each slot reads, in place (default: all N); keep [B, H, T] (bool) hides the tokens marked False.
    -> float32 out [B, H, R, D] (zeros for a row that sees no token), and with `with_scores` also the scaled scores
    and the probabilities [B, H, R, T] (float32); None where the kernel does not take the call."""
    B, H, R, D = q.shape
    N = key.shape[2]
    T = N if index is None else index.shape[-1]
    if not (key.dtype in DTYPES and value.dtype == key.dtype and key.shape == value.shape and D == key.shape[3]
            and D <= MAX_DIM and T > 0 and key.stride(-1) == 1 and value.stride(-1) == 1
            and (heads is not None or H == key.shape[1]) and _ready(R, q.device)):
        return None
    keep_alive = []  # tensors whose pointers the kernel reads: kept referenced until it returns
    pointers = []
    for name, t in (("heads", heads), ("index", index), ("keep", keep)):
        if t is None:
            pointers.append(None)
            continue
        if name == "heads":
            t = torch.as_tensor(heads, dtype=torch.int64)
            if t.shape != (H,) or not bool(((t >= 0) & (t < key.shape[1])).all()):
                raise ValueError(f"heads must name {H} KV heads in [0, {key.shape[1]}), got {heads}")
        elif name == "index":
            t = t.to(torch.int64).expand(B, H, T).contiguous()
            if not bool(((t >= 0) & (t < N)).all()):
                raise ValueError(f"token index out of range [0, {N})")
        else:
            t = t.to(torch.uint8).expand(B, H, T).contiguous()
        keep_alive.append(t)
        pointers.append(t.data_ptr())
    q = q.float().contiguous()
    strides = torch.tensor([*key.stride()[:3], *value.stride()[:3]], dtype=torch.int64)
    probs = q.new_empty(B, H, R, T)
    raw = q.new_empty(B, H, R, T) if with_scores else None
    out = q.new_empty(B, H, R, D)
    run = functools.partial(_kernels().hh_dense_attention, B, H, R, D, T, DTYPES[key.dtype], scaling, q.data_ptr(),
                            key.data_ptr(), value.data_ptr(), strides.data_ptr(), *pointers, probs.data_ptr(),
                            None if raw is None else raw.data_ptr(), out.data_ptr())
    _over_threads(run, B * H, T)
    return (out, raw, probs) if with_scores else out


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
