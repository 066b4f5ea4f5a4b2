"""GDN chunked forward on CPU: hydrahead's `chunk_gated_delta_rule` vs transformers' torch fallback.

Same shapes, same inputs, same process; the two are timed alternately so that load from other processes
hits both. Reported per length: the best (and median) of `--repeats` runs, the speedup from the best
times, each one's max abs error against a float64 run of the recurrent form, GFLOP/s as a fraction of a
dense float32 matmul sampled between the runs, and minor page faults per call (fresh memory the kernel
has to map and zero: most of the fallback's time at long lengths, and what varies most between runs).

GFLOP/s use one nominal count for both: the matmul FLOPs of the standard chunked algorithm at chunk 64
(transformers' fallback), per chunk and head 4 C^2 K (k.k^T and q.k^T) + C^2 (K + V) (the triangular
solves) + 2 C^2 V (intra-chunk attention) + 6 C K V (reading the state twice, writing it once).

    python benchmarks/gdn_chunk.py --lengths 1024,4096,16384 --heads 16 --dim 128 --repeats 5
"""

from __future__ import annotations

import argparse
import inspect
import resource
import statistics
import time

import torch
import torch.nn.functional as F
import transformers
from transformers.models.qwen3_next import modeling_qwen3_next

from hydrahead.ops import chunk_gated_delta_rule, recurrent_gated_delta_rule
from hydrahead.ops.gated_delta import DEFAULT_CHUNK_SIZE

NOMINAL_CHUNK = 64


def transformers_chunk():
    """transformers' torch code, unwrapped from its hub-kernel decorator so that no kernel replaces it."""
    fn = inspect.unwrap(modeling_qwen3_next.torch_chunk_gated_delta_rule)
    assert fn.__module__ == modeling_qwen3_next.__name__, "not the torch fallback"
    return fn


def make_inputs(batch, length, heads, dim, seed=0):
    """q, k, v as projections give them (the kernel L2-normalises q and k), decays as Qwen3-Next's gate."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    return {
        "q": randn(batch, length, heads, dim),
        "k": randn(batch, length, heads, dim),
        "v": randn(batch, length, heads, dim),
        "g": -F.softplus(randn(batch, length, heads) - 2.0),  # log decay <= 0, mean about -0.13
        "beta": torch.sigmoid(randn(batch, length, heads)),
    }


def nominal_flops(batch, length, heads, dim):
    c, k, v = NOMINAL_CHUNK, dim, dim
    per_chunk = 4 * c * c * k + c * c * (k + v) + 2 * c * c * v + 6 * c * k * v
    return batch * heads * -(-length // c) * per_chunk


class MatmulProbe:
    """Dense float32 matmul throughput, sampled between the timed runs so that it sees the same load."""

    def __init__(self, size=2048):
        self.size = size
        self.a, self.b, self.out = (torch.randn(size, size) for _ in range(3))
        self.times = []

    def sample(self):
        self.times.append(_timed(lambda: torch.mm(self.a, self.b, out=self.out)))

    def best_gflops(self):
        return 2 * self.size**3 / min(self.times) / 1e9


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(length, args, probe):
    """Times, page faults and errors of both implementations at one length."""
    inputs = make_inputs(args.batch, length, args.heads, args.dim)
    theirs_fn = transformers_chunk()
    runs = {
        "ours": lambda: chunk_gated_delta_rule(**inputs, use_qk_l2norm=True, output_final_state=True),
        "theirs": lambda: theirs_fn(inputs["q"], inputs["k"], inputs["v"], g=inputs["g"], beta=inputs["beta"],
                                    use_qk_l2norm_in_kernel=True, output_final_state=True),
    }
    result = {"length": length, "errors": dict.fromkeys(runs, float("nan")), "scale": float("nan")}
    if length <= args.ref_max_length:
        o_ref, _ = recurrent_gated_delta_rule(**{name: x.double() for name, x in inputs.items()}, use_qk_l2norm=True)
        result["errors"] = {name: (run()[0].double() - o_ref).abs().max().item() for name, run in runs.items()}
        result["scale"] = o_ref.abs().max().item()

    result["times"] = {name: [] for name in runs}
    result["faults"] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up
    for _ in range(args.repeats):
        probe.sample()
        for name, run in runs.items():
            before = _faults()
            result["times"][name].append(_timed(run))
            result["faults"][name].append(_faults() - before)
    result["flops"] = nominal_flops(args.batch, length, args.heads, args.dim)
    return result


def table_row(result, peak):
    best = {name: min(t) for name, t in result["times"].items()}
    row = f"{result['length']:>6} "
    for name in ("ours", "theirs"):
        row += f"{best[name] * 1e3:9.1f} {statistics.median(result['times'][name]) * 1e3:9.1f} "
    errors = result["errors"]
    row += f"{best['theirs'] / best['ours']:7.2f}x {result['scale']:8.2f} {errors['ours']:9.1e} {errors['theirs']:9.1e}"
    for name in ("ours", "theirs"):
        gflops = result["flops"] / best[name] / 1e9
        row += f" {gflops:7.1f} ({gflops / peak:4.0%})"
    for name in ("ours", "theirs"):
        row += f" {statistics.median(result['faults'][name]):9.0f}"
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,4096,16384", help="comma-separated sequence lengths")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128, help="key and value head dim")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ref-max-length", type=int, default=16384,
                        help="skip the float64 reference (seconds per 1K tokens) above this length")
    args = parser.parse_args()

    probe = MatmulProbe()
    with torch.inference_mode():
        results = [measure(int(length), args, probe) for length in args.lengths.split(",")]
    peak = probe.best_gflops()

    print(f"GDN chunked forward on CPU: B={args.batch}, H={args.heads}, K=V={args.dim}, float32, q/k L2-normed "
          f"in the kernel; ours at chunk {DEFAULT_CHUNK_SIZE}, transformers {transformers.__version__} torch "
          f"fallback at chunk 64")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (default, not set); dense float32 "
          f"matmul {probe.size}^3: {peak:.1f} GFLOP/s (best of {len(probe.times)}, sampled between the runs)")
    print(f"times: best and median of {args.repeats} alternating runs; speedup from the best times; error: max abs "
          f"vs float64 recurrent (max|o|: its largest output); GFLOP/s: nominal chunk-64 FLOPs / best time "
          f"(fraction of the matmul); pf: minor page faults per call (median), first touches of fresh memory")
    print(f"{'T':>6} {'ours ms':>9} {'(median)':>9} {'their ms':>9} {'(median)':>9} {'speedup':>8} "
          f"{'max|o|':>8} {'ours err':>9} {'their err':>9} {'ours GFLOP/s':>14} {'their GFLOP/s':>14} "
          f"{'ours pf':>9} {'their pf':>9}")
    for result in results:
        print(table_row(result, peak))


if __name__ == "__main__":
    from hydrahead.quiet import run_quietly

    run_quietly(main)
