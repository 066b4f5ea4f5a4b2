"""hydrahead: every attention head gets the attention and the cache it needs.

Importing hydrahead registers its model types (`hydrahead_qwen3`, `hydrahead_llama`) with transformers'
`AutoConfig` and `AutoModelForCausalLM`. The `hydrahead` command defers that (it imports torch) until it
has checked its arguments, so that bad input is refused at once.
"""

import sys

__version__ = "0.1.0"

# Public names, imported on first use: torch and transformers are heavy and the CLI's --help needs neither.
_LAZY = {
    "evaluate": "evaluation",
    "HeadPlan": "plan",
    "convert": "convert",
    "load": "convert",
    "save": "convert",
    "HybridOptions": "attention.options",
    "HydraCache": "cache",
    "HydraQwen3ForCausalLM": "modeling",
    "HydraLlamaForCausalLM": "modeling",
    "HydraQwen3Config": "configuration",
    "HydraLlamaConfig": "configuration",
    "register": "modeling",
    "sparse_decoding": "decoding.sparse",
    "SparseConfig": "decoding.config",
    "QuantizedKVCache": "kv.cache",
    "KVCacheFactory": "kv.cache",
}


from ._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = sorted(_LAZY)

if "hydrahead_cli" not in sys.modules:  # the command's entry point (src/hydrahead_cli.py) registers later
    from .modeling import register as _register

    _register()
