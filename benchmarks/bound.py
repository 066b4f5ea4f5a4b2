"""The memory-bandwidth bound of a decode step, measured in the same run as the step.

A decode step must read every weight once and the part of the cache it attends to, so no implementation
can be faster than bytes / bandwidth. The read bandwidth is measured here, in the same process, as the
best of a few passes of `sum()` over a 256 MiB float32 tensor (a pure streaming read), with the threads
the benchmark uses. Every decode benchmark prints its time against this bound and the load average.
"""

from __future__ import annotations

import json
import os
import time

import torch


def read_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second that `sum()` streams from memory (best of `repeats`)."""
    x = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    x.sum()  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best


def weight_bytes(model) -> int:
    """Bytes of every parameter a decode step reads once (tied weights counted once; the embedding too,
    which overstates a step that reads one embedding row unless the embedding is the tied output head)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    if not getattr(model.config, "tie_word_embeddings", False):
        embedding = model.get_input_embeddings().weight
        total -= embedding.numel() * embedding.element_size()  # a step reads one of its rows
    return total


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bound_line(bandwidth: float) -> str:
    return (f"read bandwidth {bandwidth / 1e9:.1f} GB/s (sum over 256 MiB, {torch.get_num_threads()} threads); "
            f"load average {load_average()}")


def save_run(path: str | None, args, bandwidth: float, results: dict, **extra) -> None:
    """Write a run's figures as JSON (nothing without a path): its arguments, the bandwidth and load average it
    ran under, its results and any `extra` fields."""
    if path:
        with open(path, "w") as f:
            json.dump({"args": vars(args), "read_bandwidth": bandwidth, "load_average": load_average(), **extra,
                       "results": results}, f, indent=1)
