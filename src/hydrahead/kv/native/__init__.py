"""Small compiled kernels for the decode step. For the quantized caches: one chunk of decode attention read straight
from the stored codes, for int4 values with int4 or tq4 keys and for the FP4 formats (`int4_decode.c`, whose header
says how; the functions here), and for bf16 or fp8 blocks (`dense_decode.c`; `dense.chunk`). For tensors in the
model's dtype (float32, bfloat16): decode attention over the cache as stored, also at sparse decoding's selected
tokens, and the weights' matrix-vector products (`dense_decode.c`; the functions in `dense.py`).

Built on first use with the system C compiler (`$CC`, else cc or gcc) for this machine (-march=native) into
`$HYDRAHEAD_CACHE_DIR/native` (default ~/.cache/hydrahead/native), named by a hash of the source, the flags and the
CPU, and loaded through ctypes: no torch headers, so building takes about a second. Without a compiler, or when the
build fails, `available()` says why and callers run the plain-PyTorch reference; nothing else changes.

HYDRAHEAD_NATIVE=0 in the environment turns it off (the reference, or the compiled-by-inductor path where asked
for, then serves every call).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ..base import KVFormat, QTensor

ENV = "HYDRAHEAD_NATIVE"
HERE = Path(__file__).parent
SOURCES = (HERE / "int4_decode.c", HERE / "dense_decode.c")  # one library; both include common.h
HEADERS = (HERE / "common.h",)
# -fassociative-math lets the dot products and sums vectorize; no -ffast-math, which would assume no infinities
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
         "-fassociative-math")
MAX_ROWS = 8  # query rows per KV head (or x rows of a product) the kernels take (common.h's MAX_ROWS)
MIN_TOKENS_PER_THREAD = 4096  # head x tokens below which a call is not split over threads

log = logging.getLogger(__name__)
_library: ctypes.CDLL | None = None
_failure: str | None = None  # why the kernel is unavailable, once a build was tried and failed
_pool: concurrent.futures.ThreadPoolExecutor | None = None  # threads a large call is split over, made on first use
_pool_size = 0


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_key() -> str:
    """What -march=native depends on: the CPU's feature flags where Linux lists them, else the processor name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("HYDRAHEAD_CACHE_DIR") or Path.home() / ".cache" / "hydrahead"
    return Path(root) / "native"


def _build() -> ctypes.CDLL:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install cc / gcc)")
    source = b"".join(path.read_bytes() for path in (*SOURCES, *HEADERS))
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + compiler.encode() + _cpu_key().encode()).hexdigest()[:16]
    target = _cache_dir() / f"hydrahead_decode-{platform.machine()}-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # built under a temporary name and renamed: a killed build leaves no half-written library behind that name
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            run = subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-o", str(out), "-lm"], capture_output=True,
                                 text=True)
            if run.returncode:
                raise RuntimeError(f"{Path(compiler).name} failed: {(run.stderr or run.stdout).strip()[:500]}")
            os.replace(out, target)
    library = ctypes.CDLL(str(target))
    # (leading int64 shape arguments, pointers); every function ends with the int64 head range [first, last)
    signatures = {"hh_int4_chunk": (7, 12), "hh_codebook_int4_chunk": (6, 12), "hh_int4_scores": (6, 6),
                  "hh_codebook_scores": (5, 6), "hh_int4_values": (6, 6), "hh_dense_attention": (7, 10),
                  "hh_dense_chunk": (6, 10), "hh_grouped_chunk": (7, 13), "hh_int4_gathered": (8, 15),
                  "hh_linear": (4, 3)}
    floats = {"hh_dense_attention": 1}  # float arguments between the ints and the pointers
    for name, (ints, pointers) in signatures.items():
        fn = getattr(library, name)
        fn.restype = ctypes.c_int
        fn.argtypes = ([ctypes.c_int64] * ints + [ctypes.c_float] * floats.get(name, 0) + [ctypes.c_void_p] * pointers
                       + [ctypes.c_int64] * 2)
    library.hh_linear_bf16_dot.restype = ctypes.c_int
    library.hh_linear_bf16_dot.argtypes = []
    return library


def available() -> tuple[bool, str]:
    """(whether the kernel can run here, why not), building it on the first call."""
    global _library, _failure
    if _library is None and _failure is None:
        try:
            _library = _build()
        except Exception as e:  # noqa: BLE001 - any build or load failure means: use the reference path
            _failure = f"{type(e).__name__}: {e}"
            log.warning("hydrahead: the native decode kernels are unavailable (%s); using the plain-PyTorch path",
                        _failure)
    return _library is not None, _failure or ""


def takes_keys(key_format: KVFormat) -> bool:
    """int4 keys grouped over tokens per channel (the default 4-bit cache's keys), or tq4 keys without QJL."""
    from ..int4 import Int4Format
    from ..tq4 import TQ4Format

    if key_format.head_dim > 2 * 128:  # int4_decode.c's MAX_HALF
        return False
    return (isinstance(key_format, Int4Format) and key_format.axis == "channel") or (
        isinstance(key_format, TQ4Format) and not key_format.qjl)


def takes_values(value_format: KVFormat) -> bool:
    """int4 values grouped over channels per token (the default 4-bit cache's values)."""
    from ..int4 import Int4Format

    return (isinstance(value_format, Int4Format) and value_format.axis == "token" and value_format.group_size % 2 == 0
            and value_format.head_dim <= 2 * 128)


def takes_gathered(key_format: KVFormat, value_format: KVFormat, rows: int, device: torch.device) -> bool:
    """Whether `gathered` serves this pair of formats: int4 values with int4 or tq4 keys."""
    return takes_keys(key_format) and takes_values(value_format) and _ready(rows, device)


def _ready(rows: int, device: torch.device) -> bool:
    """Whether the kernel may run a call of `rows` query rows per KV head on `device` (and could be built)."""
    return enabled() and device.type == "cpu" and rows <= MAX_ROWS and available()[0]


def takes(key_format: KVFormat, value_format: KVFormat, rows: int, device: torch.device) -> bool:
    """Whether `chunk` serves this pair of formats and query rows per KV head (and the kernel could be built): int4
    values with int4 or tq4 keys, or keys and values both bf16 or both fp8 (`dense.chunk`)."""
    from .dense import takes_chunk

    return ((takes_keys(key_format) and takes_values(value_format)) or takes_chunk(key_format, value_format)
            or takes_grouped(key_format, value_format)) and _ready(rows, device)


GROUPED = {"mxfp4": (32, 1), "nvfp4": (16, 2)}  # FP4 format -> (channels per scale, int4_decode.c's scale kind)


def takes_grouped(key_format: KVFormat, value_format: KVFormat) -> bool:
    """Keys and values both mxfp4 or both nvfp4: E2M1 codes with a scale per token per group of channels."""
    return (key_format.name == value_format.name and key_format.name in GROUPED and key_format.head_dim % 32 == 0
            and key_format.head_dim <= 2 * 128)


def _over_threads(run, heads: int, tokens: int, align: int = 1) -> None:
    """run(first, last) over the heads [0, heads), split over torch's thread count (ctypes releases the GIL while
    the kernel runs); a small call runs on the calling thread, where a thread hand-off would cost more. The parts
    start at multiples of `align` (a kernel that takes rows four at a time sums a row alike in every split)."""
    global _pool, _pool_size
    parts = min(torch.get_num_threads(), heads, heads * tokens // MIN_TOKENS_PER_THREAD)
    if parts <= 1:
        codes = [run(0, heads)]
    else:
        if _pool is None or _pool_size < parts:
            _pool = concurrent.futures.ThreadPoolExecutor(parts, thread_name_prefix="hydrahead-native")
            _pool_size = parts
        bounds = [heads * i // parts // align * align for i in range(parts)] + [heads]
        codes = list(_pool.map(run, bounds[:-1], bounds[1:]))
    if any(codes):
        raise RuntimeError(f"the native kernel refused its arguments (codes {codes}) after its checks accepted them")


def _step_inputs(m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor, bias: torch.Tensor | None, shape: tuple
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """An online-softmax step's state as the kernels update it (float32 copies, contiguous: the caller's tensors stay
    untouched) and its bias expanded to `shape` [B, H, R, t] (or None)."""
    m, l, acc = (x.float().contiguous().clone() for x in (m, l, acc))
    return m, l, acc, None if bias is None else bias.float().expand(*shape).contiguous()


def _per_token(scale: torch.Tensor | None, B: int, H: int, t: int) -> torch.Tensor | None:
    """A scale given per tensor, head or token as float32 [B, H, t] (None stays None); RuntimeError for another
    shape."""
    return None if scale is None else scale.float().expand(B, H, t, 1).reshape(B, H, t).contiguous()


def _inner_contiguous(t: torch.Tensor) -> bool:
    return t.stride(-1) == 1 and (t.dim() < 4 or t.stride(-2) == t.shape[-1])


def _stored(keys: QTensor | None, key_format: KVFormat | None, values: QTensor | None
            ) -> tuple[list[torch.Tensor], torch.Tensor] | None:
    """The tensors the kernel reads, in its argument order (keys' then values'), and their (b, h) strides; None when
    their layout is not one it takes (dtype, rank, inner dims not contiguous, an int4 key group cut by the chunk)."""
    wanted = []
    if keys is not None:
        if key_format.name == "tq4":  # the norms [B, H, t] are small: read as float32
            wanted += [(keys.payload, torch.uint8, 4), (keys.scales["norm"].float().contiguous(), torch.float32, 3)]
        elif keys.num_tokens % key_format.group_size:
            return None
        else:
            wanted += [(keys.payload, torch.uint8, 4), (keys.scales["scale"], torch.float16, 4),
                       (keys.scales["zero"], torch.float16, 4)]
    if values is not None:
        wanted += [(values.payload, torch.uint8, 4), (values.scales["scale"], torch.float16, 4),
                   (values.scales["zero"], torch.float16, 4)]
    if not all(x.dtype == dtype and x.dim() == dims and _inner_contiguous(x) for x, dtype, dims in wanted):
        return None
    tensors = [x for x, _, _ in wanted]
    return tensors, torch.tensor([s for x in tensors for s in x.stride()[:2]], dtype=torch.int64)


def _key_arguments(key_format: KVFormat, tensors: list[torch.Tensor], q: torch.Tensor) -> tuple[list, object]:
    """(pointer arguments for the keys, the codebook tensor to keep alive or None): tq4 passes its codebook after
    the codes."""
    if key_format.name == "tq4":
        table = key_format.codebook.to(q.device).contiguous()
        return [tensors[0].data_ptr(), table.data_ptr(), tensors[1].data_ptr()], table
    return [x.data_ptr() for x in tensors], None


def chunk(q: torch.Tensor, keys: QTensor, values: QTensor, bias: torch.Tensor | None, m: torch.Tensor,
          l: torch.Tensor, acc: torch.Tensor, key_format: KVFormat, value_format: KVFormat
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """`fused.chunk_step`'s contract (q [B, H, R, D] scaled, packed keys and values of t tokens, bias broadcastable
    to [B, H, R, t] or None, m and l [B, H, R, 1], acc [B, H, R, D] -> the updated (m, l, acc)), computed by the
    compiled kernel for a pair `takes` accepted; None when this chunk's layout is not one it takes (the caller then
    runs the reference)."""
    from . import dense

    if dense.takes_chunk(key_format, value_format):
        return dense.chunk(q, keys, values, bias, m, l, acc)
    if takes_grouped(key_format, value_format):
        return _grouped_chunk(q, keys, values, bias, m, l, acc, key_format)
    B, H, R, D = q.shape
    t = keys.num_tokens
    layout = _stored(keys, key_format, values)
    if layout is None:
        return None
    tensors, strides = layout
    n_keys = len(tensors) - 3
    q = key_format.key_query(q).float().contiguous()  # tq4: the query rotated once instead of every key unrotated
    m, l, acc, bias = _step_inputs(m, l, acc, bias, (B, H, R, t))
    key_pointers, table = _key_arguments(key_format, tensors[:n_keys], q)
    tail = [x.data_ptr() for x in tensors[n_keys:]] + [strides.data_ptr(), None if bias is None else bias.data_ptr(),
                                                       m.data_ptr(), l.data_ptr(), acc.data_ptr()]
    if table is not None:
        run = functools.partial(_library.hh_codebook_int4_chunk, B, H, R, D, t, value_format.group_size,
                                q.data_ptr(), *key_pointers, *tail)
    else:
        run = functools.partial(_library.hh_int4_chunk, B, H, R, D, t, key_format.group_size, value_format.group_size,
                                q.data_ptr(), *key_pointers, *tail)
    _over_threads(run, B * H, t)
    return m, l, acc


def _grouped_chunk(q: torch.Tensor, keys: QTensor, values: QTensor, bias: torch.Tensor | None, m: torch.Tensor,
                   l: torch.Tensor, acc: torch.Tensor, key_format: KVFormat):
    """`chunk` for FP4 keys and values (`takes_grouped`); None for a layout the kernel does not take."""
    from ..fp_codes import E2M1_VALUES

    B, H, R, D = q.shape
    t = keys.num_tokens
    group, kind = GROUPED[key_format.name]
    tensors = [keys.payload, keys.scales["scale"], values.payload, values.scales["scale"]]
    shapes = [(B, H, t, D // 2), (B, H, t, D // group)] * 2  # what the kernel will read, checked before it does
    if t < 1 or not all(x.dtype == torch.uint8 and tuple(x.shape) == shape and _inner_contiguous(x)
                        for x, shape in zip(tensors, shapes)):
        return None
    # nvfp4's per-block float32 scale, one per token here
    tensor_scales = [_per_token(x.scales.get("tensor_scale"), B, H, t) for x in (keys, values)]
    strides = torch.tensor([s for x in tensors for s in x.stride()[:2]], dtype=torch.int64)
    table = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), dtype=torch.float32)
    q = q.float().contiguous()
    m, l, acc, bias = _step_inputs(m, l, acc, bias, (B, H, R, t))
    pointer = (lambda x: None if x is None else x.data_ptr())
    run = functools.partial(_library.hh_grouped_chunk, B, H, R, D, t, group, kind, table.data_ptr(), q.data_ptr(),
                            tensors[0].data_ptr(), tensors[1].data_ptr(), pointer(tensor_scales[0]),
                            tensors[2].data_ptr(), tensors[3].data_ptr(), pointer(tensor_scales[1]), strides.data_ptr(),
                            pointer(bias), m.data_ptr(), l.data_ptr(), acc.data_ptr())
    _over_threads(run, B * H, t)
    return m, l, acc


def gathered(q: torch.Tensor, keys: QTensor, values: QTensor, heads: torch.Tensor, index: torch.Tensor,
             bias: torch.Tensor, m: torch.Tensor, l: torch.Tensor, acc: torch.Tensor, key_format: KVFormat,
             value_format: KVFormat) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """One online-softmax step at selected tokens of a packed range (int4 values with int4 or tq4 keys): q [B, S, R, D]
    scaled, heads [S] (stored KV heads), index [B, S, k] (tokens of the range), bias [B, S, R, k] (-inf: hidden), m
    and l [B, S, R, 1], acc [B, S, R, D] -> the updated (m, l, acc); None where the kernel does not take the call."""
    B, S, R, D = q.shape
    if not (takes_keys(key_format) and takes_values(value_format) and _ready(R, q.device)):
        return None
    layout = _stored(keys, key_format, values)
    if layout is None:
        return None
    tensors, strides = layout
    T, H = keys.num_tokens, keys.payload.shape[1]
    heads = torch.as_tensor(heads, dtype=torch.int64).contiguous()
    index = index.to(torch.int64).contiguous()
    if not (bool(((heads >= 0) & (heads < H)).all()) and bool(((index >= 0) & (index < T)).all())):
        raise ValueError(f"heads must be in [0, {H}) and tokens in [0, {T})")
    codebook = key_format.name == "tq4"
    if codebook:  # codes, norms, (no zeros), then the values' three
        tensors = [tensors[0], tensors[1], None, *tensors[2:]]
        strides = torch.cat([strides[:4], torch.zeros(2, dtype=torch.int64), strides[4:]])
    table = key_format.codebook.contiguous().float() if codebook else None
    q = key_format.key_query(q).float().contiguous()
    m, l, acc, bias = _step_inputs(m, l, acc, bias, (B, S, R, index.shape[-1]))
    pointer = (lambda x: None if x is None else x.data_ptr())
    run = functools.partial(_library.hh_int4_gathered, B, S, R, D, index.shape[-1], key_format.group_size if not
                            codebook else 1, value_format.group_size, int(codebook), q.data_ptr(), heads.data_ptr(),
                            index.data_ptr(), bias.data_ptr(), *[pointer(x) for x in tensors[:3]], pointer(table),
                            *[x.data_ptr() for x in tensors[3:]], strides.data_ptr(), m.data_ptr(), l.data_ptr(),
                            acc.data_ptr())
    _over_threads(run, B * S, index.shape[-1])
    return m, l, acc


def scores(q: torch.Tensor, keys: QTensor, key_format: KVFormat) -> torch.Tensor | None:
    """q [B, H, R, D] (scaled) . packed keys [B, H, t, D] -> float32 [B, H, R, t], or None where the kernel does not
    take them (the caller then scores with the format)."""
    B, H, R, D = q.shape
    if not (takes_keys(key_format) and _ready(R, q.device)):
        return None
    layout = _stored(keys, key_format, None)
    if layout is None:
        return None
    tensors, strides = layout
    t = keys.num_tokens
    q = key_format.key_query(q).float().contiguous()
    out = q.new_empty(B, H, R, t)
    key_pointers, table = _key_arguments(key_format, tensors, q)
    if table is not None:
        run = functools.partial(_library.hh_codebook_scores, B, H, R, D, t, q.data_ptr(), *key_pointers,
                                strides.data_ptr(), out.data_ptr())
    else:
        run = functools.partial(_library.hh_int4_scores, B, H, R, D, t, key_format.group_size, q.data_ptr(),
                                *key_pointers, strides.data_ptr(), out.data_ptr())
    _over_threads(run, B * H, t)
    return out


def weighted_values(p: torch.Tensor, values: QTensor, value_format: KVFormat) -> torch.Tensor | None:
    """p [B, H, R, t] @ packed values [B, H, t, D] -> float32 [B, H, R, D], or None where the kernel does not take
    them (the caller then decodes the values)."""
    B, H, R, t = p.shape
    if not (takes_values(value_format) and _ready(R, p.device)):
        return None
    layout = _stored(None, None, values)
    if layout is None:
        return None
    tensors, strides = layout
    p = p.float().contiguous()
    out = p.new_empty(B, H, R, value_format.head_dim)
    run = functools.partial(_library.hh_int4_values, B, H, R, value_format.head_dim, t, value_format.group_size,
                            p.data_ptr(), *[x.data_ptr() for x in tensors], strides.data_ptr(), out.data_ptr())
    _over_threads(run, B * H, t)
    return out
