"""What the layers of one sparse-decoding model share: the selections made so far in the current step,
the step count (for the dense correction steps), and counters of the KV bytes actually read."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .config import SparseConfig


@dataclass
class DecodeStats:
    """Per decode step, summed over layers, heads and the batch: KV bytes read against a dense step's."""

    steps: int = 0
    dense_steps: int = 0  # fallbacks (budget covers the context) and correction steps
    kv_bytes_read: int = 0
    kv_bytes_dense: int = 0

    @property
    def read_fraction(self) -> float:
        return self.kv_bytes_read / self.kv_bytes_dense if self.kv_bytes_dense else 1.0

    def add(self, read_tokens: int, dense_tokens: int, bytes_per_token: int) -> None:
        self.kv_bytes_read += read_tokens * bytes_per_token
        self.kv_bytes_dense += dense_tokens * bytes_per_token


class SparseState:
    """One per `sparse_decoding` context. `selected[kv]` is the latest selection of KV-head index `kv` in this
    forward: layers run in order, so when a sparse head of layer l reads it, it is the one made by the nearest
    lower layer whose KV head `kv` is a retrieval head."""

    def __init__(self, config: SparseConfig):
        self.config = config
        self.selected: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}  # kv -> (index, keep [B, k], layer)
        self.sources: dict[tuple[int, int], int] = {}  # (layer, kv) of a sparse head -> the layer it reused, last step
        self.decode_step = 0  # decode steps since the last prefill
        self.dense_now = False
        self.stats = DecodeStats()
        self._fresh = False
        self._scratch: dict[str, torch.Tensor] = {}

    def scratch(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A buffer of `shape` reused across layers and steps (the gathers of sparse heads write into it):
        a view of one flat allocation that only grows, since layers differ in their number of sparse heads."""
        n = math.prod(shape)
        buf = self._scratch.get(name)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._scratch[name] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)

    def begin_forward(self) -> None:
        """Called before every model forward (a pre-hook): a new step selects anew."""
        self.selected.clear()
        self._fresh = True

    def on_attention(self, q_len: int) -> None:
        """Called by every attention call; the first of a forward decides what kind of step it is."""
        if not self._fresh:
            return
        self._fresh = False
        if q_len > 1:  # a prefill (or a chunk of one) is dense and restarts the count
            self.decode_step, self.dense_now = 0, False
            return
        self.decode_step += 1
        self.stats.steps += 1
        every = self.config.dense_every
        self.dense_now = bool(every) and self.decode_step % every == 0
        if self.dense_now:
            self.stats.dense_steps += 1


@dataclass
class LayerSlot:
    """One attention module's place in sparse decoding: its layer, the original KV-head index of each key
    head it is handed (a hybrid's FA branch gets only its cached KV heads, or one per FA query head), and
    the decode role of each."""

    state: SparseState
    layer: int
    kv_ids: list[int]
    retrieval: list[bool]
    runs: list[tuple[int, int]] = field(init=False)  # contiguous key-head ranges of retrieval heads

    def __post_init__(self):
        self.runs = contiguous_runs([i for i, r in enumerate(self.retrieval) if r])


def contiguous_runs(positions: list[int]) -> list[tuple[int, int]]:
    """[0, 1, 2, 5, 6] -> [(0, 3), (5, 7)]: head ranges that slice as views, so dense heads copy no KV."""
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs
