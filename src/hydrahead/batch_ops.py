"""The batch operations of transformers' cache API (beam search, contrastive search) for hydrahead's caches.

Each cache or cache layer says once how a batch-dim operation reaches everything it stores (`map_batch`); the
three methods generation calls are written here in terms of it."""

from __future__ import annotations

import torch


class BatchOps:
    """Put before the transformers base class (`class X(BatchOps, CacheLayerMixin)`) so that these win."""

    def map_batch(self, fn) -> None:
        """Apply `fn` (a batch-dim operation on a tensor) to every tensor stored."""
        raise NotImplementedError(f"{type(self).__name__} must say how a batch operation reaches its tensors")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.map_batch(lambda t: t.index_select(0, indices.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.map_batch(lambda t: t.repeat_interleave(repeats, dim=0))
