"""The native kernels for tensors in the model's dtype (`dense_decode.c`): a decode step's attention over keys and
values as stored, and the weights' matrix-vector products. Each returns None where it does not take a call (another
dtype or device, too many rows, a layout it cannot read, the kernel off or not built); the caller then runs PyTorch.
"""

from __future__ import annotations

import functools

import torch

from . import MAX_ROWS, _over_threads, _per_token, _ready, _step_inputs
from . import available as _available

DTYPES = {torch.float32: 0, torch.bfloat16: 1}
MAX_DIM = 256  # dense_decode.c's MAX_DIM
# weights below this many elements stay with torch: they sit in the CPU's caches, where a step is not bound by
# memory and torch's call costs less than this one's (about 10 us more for 256 x 256; a tie at 1024 x 1024)
MIN_WEIGHT_ELEMENTS = 1 << 20


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
    if not (key.dtype in DTYPES and value.dtype == key.dtype and key.shape == value.shape and key.shape[0] == B
            and D == key.shape[3] and D <= MAX_DIM and T > 0 and key.stride(-1) == 1 and value.stride(-1) == 1
            and (heads is not None or H == key.shape[1]) and _ready(R, q.device)):
        return None
    if heads is not None:
        heads = torch.as_tensor(heads, dtype=torch.int64)
        if heads.shape != (H,) or not bool(((heads >= 0) & (heads < key.shape[1])).all()):
            raise ValueError(f"heads must name {H} KV heads in [0, {key.shape[1]}), got {heads.tolist()}")
    if index is not None:
        index = index.to(torch.int64).expand(B, H, T).contiguous()
        if not bool(((index >= 0) & (index < N)).all()):
            raise ValueError(f"token index out of range [0, {N})")
    if keep is not None:
        keep = keep.to(torch.uint8).expand(B, H, T).contiguous()
    pointers = [None if x is None else x.data_ptr() for x in (heads, index, keep)]  # the tensors stay referenced
    bf16_query = q.dtype == torch.bfloat16  # its numbers stay exact where the kernel rounds to bfloat16
    q = q.float().contiguous()
    strides = torch.tensor([*key.stride()[:3], *value.stride()[:3]], dtype=torch.int64)
    probs = q.new_empty(B, H, R, T)
    raw = q.new_empty(B, H, R, T) if with_scores else None
    out = q.new_empty(B, H, R, D)
    run = functools.partial(_kernels().hh_dense_attention, B, H, R, D, T, DTYPES[key.dtype], bf16_query, scaling,
                            q.data_ptr(), key.data_ptr(), value.data_ptr(), strides.data_ptr(), *pointers,
                            probs.data_ptr(), None if raw is None else raw.data_ptr(), out.data_ptr())
    _over_threads(run, B * H, T)
    return (out, raw, probs) if with_scores else out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """torch.nn.functional.linear for a decode step: x [..., K] with at most MAX_ROWS rows, in the weight's dtype
    (float32 or bfloat16), weight [N, K] contiguous, of at least MIN_WEIGHT_ELEMENTS -> [..., N] in that dtype; None
    where the kernel does not take the call (a small weight, more rows, another dtype or device, or autograd would
    need the product)."""
    rows = x.numel() // max(x.shape[-1], 1)
    if not (weight.numel() >= MIN_WEIGHT_ELEMENTS and weight.dtype in DTYPES and x.dtype == weight.dtype
            and weight.dim() == 2 and weight.is_contiguous() and x.shape[-1] == weight.shape[1]
            and 0 < rows <= MAX_ROWS and x.device == weight.device
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and _ready(1, weight.device)):
        return None
    N, K = weight.shape
    flat = x.reshape(rows, K).contiguous()
    y = torch.empty(rows, N, dtype=torch.float32, device=x.device)
    run = functools.partial(_kernels().hh_linear, rows, N, K, DTYPES[weight.dtype], flat.data_ptr(),
                            weight.data_ptr(), y.data_ptr())
    _over_threads(run, N, K * rows, align=4)  # dense_decode.c takes weight rows four at a time
    if bias is not None:
        y += bias.float()
    return y.to(weight.dtype).view(*x.shape[:-1], N)


def bf16_dot_product() -> bool:
    """Whether bfloat16 products run on the CPU's AVX512-BF16 dot-product instruction here (else widened by a shift)."""
    return _available()[0] and bool(_kernels().hh_linear_bf16_dot())


CHUNK_DTYPES = {**DTYPES, torch.float8_e4m3fn: 2}  # payloads hh_dense_chunk reads (fp8 with a scale per token)
CHUNK_FORMATS = ("bf16", "fp8")  # the KV formats whose payloads those are


def takes_chunk(key_format, value_format) -> bool:
    """Keys and values both bf16, or both fp8: the quantized cache's formats that store plain numbers."""
    return key_format.name == value_format.name and key_format.name in CHUNK_FORMATS


def _per_token_scale(x, B: int, H: int, t: int) -> torch.Tensor | None | bool:
    """A QTensor's scale as float32 [B, H, t] (one per tensor, head or token), None without one, False for a shape
    the kernel cannot take."""
    try:
        return _per_token(x.scales.get("scale"), B, H, t)
    except RuntimeError:
        return False


def chunk(q: torch.Tensor, keys, values, bias: torch.Tensor | None, m: torch.Tensor, l: torch.Tensor,
          acc: torch.Tensor):
    """`fused.chunk_step`'s contract for bf16 or fp8 keys and values (QTensors whose payloads are those numbers):
    q [B, H, R, D] scaled; bias broadcastable to [B, H, R, t] or None; m, l [B, H, R, 1], acc [B, H, R, D] -> the
    updated (m, l, acc); None where the kernel does not take the chunk's layout."""
    B, H, R, D = q.shape
    kp, vp = keys.payload, values.payload
    if not (kp.dtype in CHUNK_DTYPES and vp.dtype == kp.dtype and kp.dim() == 4 and kp.shape == vp.shape
            and kp.shape[:2] == (B, H) and kp.shape[3] == D and D <= MAX_DIM and kp.shape[2] > 0
            and kp.stride(-1) == 1 and vp.stride(-1) == 1 and _ready(R, q.device)):
        return None
    t = kp.shape[2]
    key_scale, value_scale = _per_token_scale(keys, B, H, t), _per_token_scale(values, B, H, t)
    if key_scale is False or value_scale is False:
        return None
    q = q.float().contiguous()
    m, l, acc, bias = _step_inputs(m, l, acc, bias, (B, H, R, t))
    strides = torch.tensor([*kp.stride()[:3], *vp.stride()[:3]], dtype=torch.int64)
    run = functools.partial(_kernels().hh_dense_chunk, B, H, R, D, t, CHUNK_DTYPES[kp.dtype], q.data_ptr(),
                            kp.data_ptr(), vp.data_ptr(), strides.data_ptr(),
                            *[None if x is None else x.data_ptr() for x in (key_scale, value_scale, bias)],
                            m.data_ptr(), l.data_ptr(), acc.data_ptr())
    _over_threads(run, B * H, t)
    return m, l, acc
