"""hydrahead: every attention head gets the attention and the cache it needs."""

__version__ = "0.1.0"

# Public names, imported on first use: torch and transformers are heavy and the CLI's --help needs neither.
_LAZY = {
    "evaluate": "evaluation",
    "HeadPlan": "plan",
    "convert": "convert",
    "load": "convert",
    "save": "convert",
    "HybridOptions": "attention.options",
    "HybridCache": "cache",
    "sparse_decoding": "decoding.sparse",
    "SparseConfig": "decoding.config",
    "QuantizedKVCache": "kv.cache",
    "KVCacheFactory": "kv.cache",
}


from ._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = sorted(_LAZY)
