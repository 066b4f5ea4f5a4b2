"""KV storage formats: bf16, fp8 and the 4-bit codecs of UltraQuant and its anchors (int4, mxfp4, nvfp4, tq4).

A format quantizes a [..., T, D] tensor of keys or values into a QTensor and back; `get_format`
builds one by name and `parse_kv_format` reads a "key:value" spec such as "tq4:int4".

The quantized KV cache built on them (`QuantizedKVCache`, `KVCacheFactory`, `blockwise_attention`) loads
transformers, so its names are imported on first use.
"""

from __future__ import annotations

import inspect

from .base import KVFormat, KVFormatError, QTensor
from .bf16 import BF16Format
from .fp8 import FP8Format
from .int4 import Int4Format
from .mxfp4 import MXFP4Format
from .nvfp4 import NVFP4Format
from .tq4 import TQ4Format

FORMATS: dict[str, type[KVFormat]] = {
    cls.name: cls for cls in (BF16Format, FP8Format, Int4Format, MXFP4Format, NVFP4Format, TQ4Format)
}


def _check_name(name: str) -> None:
    if name not in FORMATS:
        raise KVFormatError(f"unknown KV format {name!r}; known formats: {', '.join(FORMATS)}")


def get_format(name: str, head_dim: int, **kw) -> KVFormat:
    """The format `name` for heads of size `head_dim`, with its options (e.g. axis="channel" for int4)."""
    _check_name(name)
    cls = FORMATS[name]
    options = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "head_dim")]
    unknown = sorted(set(kw) - set(options))
    if unknown:
        takes = ", ".join(options) if options else "no options"
        raise KVFormatError(f"KV format {name!r} has no option {unknown[0]!r}; it takes {takes}")
    return cls(head_dim, **kw)


def parse_kv_format(spec: str) -> tuple[str, str]:
    """"tq4:int4" -> ("tq4", "int4") as (keys, values); a single name serves both."""
    parts = [part.strip() for part in str(spec).split(":")]
    if len(parts) > 2 or not all(parts):
        raise KVFormatError(f"a KV format spec is NAME or KEY_NAME:VALUE_NAME, got {spec!r}")
    for name in parts:
        _check_name(name)
    return (parts[0], parts[-1])


# the cache side of the package, imported on first use
_LAZY = {
    "QuantizedKVCache": "cache",
    "QuantizedHydraCache": "cache",
    "quantized_cache": "cache",
    "KVCacheFactory": "cache",
    "QuantizedKVLayer": "layer",
    "MixedKVLayer": "mixed",
    "MixedKVView": "mixed",
    "plan_cache": "cache",
    "KVCacheError": "layer",
    "KVView": "view",
    "blockwise_attention": "attention",
    "use_blockwise_attention": "attention",
    "parse_cache_spec": "spec",
    "canonical_spec": "spec",
}


from .._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [  # noqa: RUF022 - the codecs, then the lazily imported cache names
    "FORMATS",
    "BF16Format",
    "FP8Format",
    "Int4Format",
    "KVFormat",
    "KVFormatError",
    "MXFP4Format",
    "NVFP4Format",
    "QTensor",
    "TQ4Format",
    "get_format",
    "parse_kv_format",
    "KVCacheError",
    "KVCacheFactory",
    "KVView",
    "MixedKVLayer",
    "MixedKVView",
    "QuantizedHydraCache",
    "QuantizedKVCache",
    "QuantizedKVLayer",
    "blockwise_attention",
    "canonical_spec",
    "parse_cache_spec",
    "plan_cache",
    "quantized_cache",
    "use_blockwise_attention",
]
