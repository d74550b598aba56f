#!/usr/bin/env python3
"""Core data movement: d9d vs numpy, side by side in one run.

usage: .venv/bin/python3 bench/core/core.py [BUILD_DIR] [--reps N]

Runs build/bench/core/bench_core (d9d, with memcpy of the same bytes as the limit), then the same
ops in numpy (ml_dtypes for BF16), and prints one table: GB/s counts every byte read plus every
byte written; "vs memcpy" is d9d over the better of one-thread and all-thread memcpy of the same
bytes; "vs numpy" is d9d over numpy. Medians over --reps runs after a warm-up.
"""
import json
import os
import statistics
import subprocess
import sys
import time

import ml_dtypes
import numpy as np

BF16 = ml_dtypes.bfloat16


def median_seconds(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rand(shape, dtype):
    rng = np.random.default_rng(42)
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype)


def numpy_ops(reps):
    """(op, detail) -> GB/s for numpy doing the same work as bench_core."""
    n = 4096
    out = {}

    def run(op, detail, bytes_moved, fn):
        out[(op, detail)] = bytes_moved / median_seconds(fn, reps) / 1e9

    for name, dtype, rows in (("BF16", BF16, n), ("F32", np.float32, n // 2)):
        three = [rand((rows, n), dtype) for _ in range(3)]
        shape = f"3x[{rows},4096]"
        moved = 2 * 3 * three[0].nbytes
        run("stack", f"{name} {shape} dim 0", moved, lambda: np.stack(three, 0))
        run("cat", f"{name} {shape} dim 0", moved, lambda: np.concatenate(three, 0))
        run("cat", f"{name} {shape} dim 1", moved, lambda: np.concatenate(three, 1))
    x = rand((n, 2 * n), BF16)
    run("chunk", "BF16 [4096,8192] into 2 on dim 1, each contiguous()", 2 * x.nbytes,
        lambda: [np.ascontiguousarray(p) for p in np.array_split(x, 2, axis=1)])
    y = rand((n, 3, n), BF16)
    run("unbind", "BF16 [4096,3,4096] on dim 1, each contiguous()", 2 * y.nbytes,
        lambda: [np.ascontiguousarray(y[:, i, :]) for i in range(3)])
    x = rand((n, n), BF16)
    run("transpose", "BF16 [4096,4096] transpose(0,1).contiguous()", 2 * x.nbytes,
        lambda: np.ascontiguousarray(x.T))
    big = rand((2 * n, 2 * n), BF16)
    run("transpose", "BF16 [8192,8192] transpose(0,1).contiguous()", 2 * big.nbytes,
        lambda: np.ascontiguousarray(big.T))
    del big
    f = rand((n, n), np.float32)
    run("transpose", "F32 [4096,4096] transpose(0,1).contiguous()", 2 * f.nbytes,
        lambda: np.ascontiguousarray(f.T))
    run("cast", "F32->BF16 [4096,4096]", 1.5 * f.nbytes, lambda: f.astype(BF16))
    run("cast", "BF16->F32 [4096,4096]", 3 * x.nbytes, lambda: x.astype(np.float32))
    return out


def main():
    args = [a for a in sys.argv[1:]]
    reps = 7
    if "--reps" in args:
        i = args.index("--reps")
        reps = int(args[i + 1])
        del args[i:i + 2]
    build = args[0] if args else "build"
    binary = os.path.join(build, "bench", "core", "bench_core")
    d9d = [json.loads(line) for line in
           subprocess.run([binary, "--reps", str(reps)], check=True, capture_output=True,
                          text=True).stdout.splitlines() if line.startswith("{")]
    numpy = numpy_ops(reps)
    threads = d9d[0]["threads"] if d9d else 0
    print(f"core data movement, {threads} threads, median of {reps} runs "
          f"(GB/s = bytes read + written per second)\n")
    print("| op | shape | d9d GB/s | memcpy GB/s | d9d / memcpy | numpy GB/s | d9d / numpy |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in d9d:
        np_gbps = numpy.get((row["op"], row["detail"]))
        ratio_np = f"{row['gbps'] / np_gbps:.2f}x" if np_gbps else "n/a"
        np_text = f"{np_gbps:.1f}" if np_gbps else "n/a"
        print(f"| {row['op']} | {row['detail']} | {row['gbps']:.1f} | {row['memcpy_gbps']:.1f} | "
              f"{row['gbps'] / row['memcpy_gbps']:.2f} | {np_text} | {ratio_np} |")


if __name__ == "__main__":
    main()
