"""nn.Linear whose decode-step products run in the native kernel (`hydrahead.kv.native.dense.linear`).

A decode step multiplies one row (or a few) by every weight: it is bound by reading the weights once, and torch's
CPU matmul for a single row reads them at about half the bandwidth (a third in bfloat16;
benchmarks/hybrid_decode.py prints the step against its bound). `DecodeLinear` is nn.Linear with the same
parameters and state dict; a call of at most MAX_ROWS rows, in float32 or bfloat16, on the CPU, with no autograd
graph to build and a weight of a million elements or more, goes to the kernel, and every other call (prefill,
training, other dtypes or devices, a weight small enough to sit in the CPU's caches, the kernel off with
HYDRAHEAD_NATIVE=0 or not built) to nn.Linear's forward.

hydrahead's models use it for every linear layer; `use_decode_linear(model)` converts another model's (the
benchmarks' plain Qwen3) in place.
"""

from __future__ import annotations

import torch
from torch import nn

from .kv.native import dense as native_dense


class DecodeLinear(nn.Linear):
    """nn.Linear; decode-step products in the native kernel where it takes them (module docstring)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Linear's argument name
        out = native_dense.linear(input, self.weight, self.bias)
        return super().forward(input) if out is None else out


def use_decode_linear(model: nn.Module) -> int:
    """Every plain nn.Linear in `model` becomes a DecodeLinear in place (the same module, parameters and hooks; only
    its forward changes). Returns how many were converted; subclasses of nn.Linear are left alone."""
    converted = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = DecodeLinear
            converted += 1
    return converted
