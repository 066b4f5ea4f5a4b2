"""Attention branches (FA, GDN), the head-wise hybrid module and its fusion."""

from .hybrid import HybridAttention
from .options import HybridOptions

__all__ = ["HybridAttention", "HybridOptions"]
