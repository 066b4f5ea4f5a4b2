"""HydraHead's three-stage transfer (align, distill, long context) and its one training loop."""

from .config import STAGES, TransferConfig, TransferError, load_config
from .data import packed_batch
from .loop import train_stage
from .stages import Align, Distill, LongContext, make_stage

__all__ = [
    "STAGES", "Align", "Distill", "LongContext", "TransferConfig", "TransferError", "load_config", "make_stage",
    "packed_batch", "train_stage",
]
