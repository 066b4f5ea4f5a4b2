"""The GDN heads' short causal conv on CPU: hydrahead's time-major shifted sum against depthwise conv1d.

Every GDN layer runs a depthwise causal conv (kernel 4) over its q|k|v channels before the delta rule, in
prefill and in training. hydrahead computes it as a sum of shifted copies of the time-major [B, T, C] input, one
fused multiply-add per tap (`attention.gdn.causal_depthwise_conv`). The baseline is what other implementations
call, `F.conv1d(..., groups=C)` on the channel-major [B, C, T] layout (counting the transposes into and out of it,
as the GDN layer would need them); beside it, the channel-major shifted sum hydrahead used before. Same inputs, same
process, timed alternately so that load from other processes hits all three; forward (no grad, as in evaluation)
and forward + backward (as in training). Each result is checked against the baseline before timing.

    OMP_NUM_THREADS=1 python benchmarks/gdn_conv.py --shapes 8x512,4x1024,1x8192 --channels 768 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from hydrahead.attention.gdn import causal_depthwise_conv


def baseline(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise conv1d on the channel-major layout, from and back to the time-major one."""
    return F.conv1d(x.transpose(1, 2), weight, groups=weight.shape[0]).transpose(1, 2)


def channel_major_sum(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """hydrahead's implementation until 2026-12-02: shifted copies of the channel-major layout."""
    full = x.transpose(1, 2)
    taps = weight.shape[-1]
    length = full.shape[-1] - taps + 1
    out = full[..., :length] * weight[:, 0, 0, None]
    for j in range(1, taps):
        out = out + full[..., j : j + length] * weight[:, 0, j, None]
    return out.transpose(1, 2)


IMPLEMENTATIONS = {"conv1d": baseline, "channel-major sum": channel_major_sum, "ours": causal_depthwise_conv}


def measure(batch: int, length: int, channels: int, taps: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, taps - 1 + length, channels, generator=gen, requires_grad=True)
    weight = torch.randn(channels, 1, taps, generator=gen, requires_grad=True)
    grad = torch.randn(batch, length, channels, generator=gen)
    reference = baseline(x, weight)
    ref_grads = torch.autograd.grad(reference, (x, weight), grad)
    for name, fn in IMPLEMENTATIONS.items():  # the same numbers first, then their speed
        out = fn(x, weight)
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5, msg=f"{name}: forward differs")
        for ours, theirs in zip(torch.autograd.grad(out, (x, weight), grad), ref_grads):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3, msg=f"{name}: gradient differs")

    def forward(fn):
        with torch.no_grad():
            fn(x, weight)

    def training(fn):
        torch.autograd.grad(fn(x, weight), (x, weight), grad)

    times = {(mode, name): [] for mode in ("forward", "forward+backward") for name in IMPLEMENTATIONS}
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for (mode, name), kept in times.items():
            run = forward if mode == "forward" else training
            start = time.perf_counter()
            run(IMPLEMENTATIONS[name])
            kept.append(time.perf_counter() - start)
    return {"batch": batch, "length": length, "channels": channels,
            "ms": {f"{mode} / {name}": [1e3 * t for t in kept[1:]] for (mode, name), kept in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="8x512,4x1024,1x8192", help="comma-separated BATCHxLENGTH")
    ap.add_argument("--channels", type=int, default=768, help="q|k|v channels (the 8-layer teacher's hybrid: 768)")
    ap.add_argument("--taps", type=int, default=4, help="the conv's kernel size (GDN's default: 4)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="also write the times here")
    args = ap.parse_args()
    try:
        shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    except ValueError:
        raise SystemExit(f"--shapes: expected BATCHxLENGTH,..., got {args.shapes!r}") from None
    if any(len(s) != 2 or min(s) < 1 for s in shapes) or args.channels < 1 or args.taps < 2 or args.repeats < 1:
        raise SystemExit("--shapes need positive BATCHxLENGTH, --channels >= 1, --taps >= 2, --repeats >= 1")

    results = [measure(b, t, args.channels, args.taps, args.repeats) for b, t in shapes]
    print(f"GDN causal conv (kernel {args.taps}, {args.channels} channels, float32) on CPU: torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f}; median of {args.repeats} "
          "alternating runs (ms); speedup: conv1d's median / ours")
    print("| B x T | mode | conv1d | channel-major sum | ours | speedup over conv1d |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        for mode in ("forward", "forward+backward"):
            med = {name: statistics.median(r["ms"][f"{mode} / {name}"]) for name in IMPLEMENTATIONS}
            print(f"| {r['batch']} x {r['length']} | {mode} | {med['conv1d']:.1f} | {med['channel-major sum']:.1f} "
                  f"| {med['ours']:.1f} | {med['conv1d'] / med['ours']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "load_average": os.getloadavg(), "results": results}, f, indent=1)


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
