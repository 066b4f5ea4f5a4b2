"""The quantized blocks of one layer's keys (or values), packed: each tensor a format stores (payload and every
scale) lives in one buffer that grows by doubling and is written block by block as blocks are quantized, so a
decode step reads long contiguous ranges instead of a list of small tensors."""

from __future__ import annotations

import torch

from .base import KVFormat, KVFormatError, QTensor


class PackedBlocks:
    """Blocks of `block_size` tokens quantized with `fmt`, one `append` each, read back as one block (`block`) or a
    range of whole blocks (`range`) that `fmt` decodes like any QTensor.

    Where tokens run in a stored tensor: every stored tensor of a [..., T, D] QTensor either leads with the
    QTensor's leading dims followed by a dim that grows with the tokens (T entries, or one per group of tokens:
    int4 keys per 32, fp8-head one per block), or is a 0-dim scalar of the whole quantize call. Buffers append
    blocks along that dim; a scalar is kept as [1, ..., blocks, 1]. Scales the format declares in `block_scales`
    (one value per quantize call) are spread over their block's tokens when a range of blocks is read.
    """

    def __init__(self, fmt: KVFormat, block_size: int):
        self.fmt, self.block_size = fmt, block_size
        self.num_blocks = 0
        self._buffers: dict[str, torch.Tensor] = {}  # "payload" and each scale, blocks along dim `lead`
        self._units: dict[str, int] = {}  # entries along dim `lead` per block
        self._scalars: set[str] = set()
        self._shape: tuple[int, ...] | None = None  # one block's [..., block_size, D]
        self._dtype: torch.dtype | None = None

    @property
    def lead(self) -> int:
        return len(self._shape) - 2

    @property
    def capacity(self) -> int:
        if not self._buffers:
            return 0
        return self._buffers["payload"].shape[self.lead] // self._units["payload"]

    def _leading(self) -> tuple[int, ...]:
        """The leading dims now (batch operations may have changed the batch size since the first block)."""
        return tuple(self._buffers["payload"].shape[: self.lead])

    def append(self, q: QTensor, reserve: int = 1) -> None:
        """Store one block (a QTensor of block_size tokens); when the buffers must grow, they make room for at least
        `reserve` blocks (a prefill's flush knows how many come)."""
        if q.num_tokens != self.block_size:
            raise KVFormatError(f"a packed block holds {self.block_size} tokens, got {q.num_tokens}")
        tensors = {"payload": q.payload, **q.scales}
        if self._shape is None:
            self._layout(q, tensors)
            self._first_buffers(tensors)
        if self.num_blocks == self.capacity:
            self._grow(max(reserve, 2 * self.capacity, 1))
        for name, t in tensors.items():
            u = self._units[name]
            if name in self._scalars:
                t = t.reshape((1,) * (self.lead + 2))
            self._buffers[name].narrow(self.lead, self.num_blocks * u, u).copy_(t)
        self.num_blocks += 1

    def _layout(self, q: QTensor, tensors: dict[str, torch.Tensor]) -> None:
        self._shape, self._dtype = tuple(q.shape), q.dtype
        lead = self.lead
        for name, t in tensors.items():
            if t.dim() == 0:
                self._scalars.add(name)
                self._units[name] = 1
            elif t.dim() > lead and tuple(t.shape[:lead]) == self._shape[:lead]:
                self._units[name] = t.shape[lead]
            else:
                raise KVFormatError(f"{self.fmt.name} stores {name!r} of shape {tuple(t.shape)} for a tensor of shape "
                                    f"{self._shape}: neither a scalar nor led by its leading dims and tokens")

    def _grow(self, blocks: int) -> None:
        for name, old in self._buffers.items():
            u = self._units[name]
            shape = list(old.shape)
            shape[self.lead] = blocks * u
            new = old.new_empty(shape)
            used = self.num_blocks * u
            if used:
                new.narrow(self.lead, 0, used).copy_(old.narrow(self.lead, 0, used))
            self._buffers[name] = new

    def _first_buffers(self, tensors: dict[str, torch.Tensor]) -> None:
        """Empty buffers shaped after the first block (capacity 0), so that `_grow` can size them."""
        lead = self.lead
        for name, t in tensors.items():
            if name in self._scalars:
                self._buffers[name] = t.reshape((1,) * (lead + 2))[..., :0, :]
            else:
                self._buffers[name] = t.narrow(lead, 0, 0)

    def block(self, i: int) -> QTensor:
        """Block i exactly as its format's `quantize` returned it (views into the buffers)."""
        if not 0 <= i < self.num_blocks:
            raise IndexError(f"block {i} of {self.num_blocks}")
        scales = {}
        for name, buf in self._buffers.items():
            u = self._units[name]
            t = buf.narrow(self.lead, i * u, u)
            scales[name] = t.reshape(()) if name in self._scalars else t
        payload = scales.pop("payload")
        return QTensor(self.fmt.name, (*self._leading(), *self._shape[self.lead:]), self._dtype, payload, scales)

    def range(self, start: int, end: int) -> QTensor:
        """Blocks [start, end) as one QTensor of (end - start) * block_size tokens, read in place (only the scales
        of `fmt.block_scales`, one value per block, are spread over their tokens: a copy of one value per token)."""
        if not 0 <= start < end <= self.num_blocks:
            raise IndexError(f"blocks {start}..{end} of {self.num_blocks}")
        lead, leading = self.lead, self._leading()
        tokens = (end - start) * self.block_size
        tensors = {}
        for name, buf in self._buffers.items():
            u = self._units[name]
            t = buf.narrow(lead, start * u, (end - start) * u)
            if name in self.fmt.block_scales:
                t = t.repeat_interleave(self.block_size // u, dim=lead)  # [..., tokens, 1]: u is 1 here
                t = t.expand(*leading, *t.shape[lead:])
            tensors[name] = t
        payload = tensors.pop("payload")
        return QTensor(self.fmt.name, (*leading, tokens, self._shape[-1]), self._dtype, payload, tensors)

    def nbytes(self) -> tuple[int, int]:
        """(payload, scales) bytes of the blocks stored, as the blocks' own QTensors count them."""
        payload = scales = 0
        for name, buf in self._buffers.items():
            used = buf.narrow(self.lead, 0, self.num_blocks * self._units[name])
            n = used.numel() * used.element_size()
            if name == "payload":
                payload += n
            else:
                scales += n
        return payload, scales

    def map_batch(self, fn) -> None:
        """Apply a batch-dim operation to every buffer; a scalar is shared by the whole batch and stays."""
        self._buffers = {name: buf if name in self._scalars else fn(buf) for name, buf in self._buffers.items()}

    def reset(self) -> None:
        self.__init__(self.fmt, self.block_size)
