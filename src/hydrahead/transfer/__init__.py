"""HydraHead's three-stage transfer (align, distill, long context) and its one training loop."""

# imported on first use, so that the command line checks a transfer config without loading torch
_LAZY = {
    "STAGES": "config",
    "TransferConfig": "config",
    "TransferError": "config",
    "load_config": "config",
    "packed_batch": "data",
    "train_stage": "loop",
    "Align": "stages",
    "Distill": "stages",
    "LongContext": "stages",
    "make_stage": "stages",
}


from .._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = sorted(_LAZY)
