#!/usr/bin/env python3
"""Dequantization throughput: d9d vs memcpy of the same bytes vs the numpy + ml_dtypes oracle, in
one run.

usage: .venv/bin/python3 bench/quant/quant.py [BUILD_DIR] [--reps N]

Runs build/bench/quant/bench_quant (d9d's CPU dequantize to BF16, with memcpy of the same bytes as
the limit, timed in turn with it), which also writes its inputs to a temporary folder; then the
numpy oracle (the formats' definitions as tests/core/quant_oracle.py writes them: decode with
ml_dtypes, scales expanded, F32 arithmetic, one rounding to BF16) on the same inputs. GB/s counts
every byte read (weight and scales) plus every byte written (the BF16 output); "vs memcpy" is d9d
over the better of one-thread and all-thread memcpy of the same bytes; "one core" is d9d on one
thread over one-thread memcpy, both timed by the thread's CPU time (on a shared machine, what
the wall clock cannot say). Medians of --reps runs after a warm-up.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np

BF16 = ml_dtypes.bfloat16
FP4 = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
N = 4096

# case -> its inputs (bench_quant writes them; the outputs are BF16 of the logical shape)
CASES = {
    "fp8_block": "F8_E4M3 [4096,4096], F32 128x128 block scales",
    "fp8_channel": "F8_E4M3 [4096,4096], BF16 scale per row",
    "mxfp4": "U8 [4096,128,16] blocks, E8M0 [4096,128] scales",
    "nvfp4": "U8 [4096,2048], E4M3 [4096,256] scales, F32 global (divide)",
    "mxfp4_experts": "gpt-oss-20b down_proj: U8 [32,2880,90,16], E8M0 [32,2880,90]",
}


def median_seconds(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load(folder, name, dtype, shape):
    return np.fromfile(os.path.join(folder, name), dtype=dtype).reshape(shape)


def fp4_values(packed):
    return np.stack([FP4[packed & 0x0F], FP4[packed >> 4]], axis=-1)


def numpy_cases(folder):
    """case -> the numpy oracle's dequantization of bench_quant's inputs, as a function."""
    e4m3 = ml_dtypes.float8_e4m3fn
    w = load(folder, "fp8_block.w", np.uint8, (N, N)).view(e4m3)
    s = load(folder, "fp8_block.s", np.float32, (N // 128, N // 128))
    c = load(folder, "fp8_channel.s", np.uint16, (N, 1)).view(BF16)
    blocks = load(folder, "mxfp4.w", np.uint8, (N, N // 32, 16))
    mx_scales = load(folder, "mxfp4.s", np.uint8, (N, N // 32))
    packed = load(folder, "nvfp4.w", np.uint8, (N, N // 2))
    nv_scales = load(folder, "nvfp4.s", np.uint8, (N, N // 16)).view(e4m3)
    experts = load(folder, "mxfp4_experts.w", np.uint8, (32, 2880, 90, 16))
    expert_scales = load(folder, "mxfp4_experts.s", np.uint8, (32, 2880, 90))

    def mxfp4(b, sc):
        scale = sc.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
        v = fp4_values(b).reshape(*b.shape[:-1], 32) * scale[..., None]
        return v.reshape(*b.shape[:-2], b.shape[-2] * 32).astype(BF16)

    return {
        "fp8_block": lambda: (w.astype(np.float32) *
                              np.repeat(np.repeat(s, 128, 0), 128, 1)).astype(BF16),
        "fp8_channel": lambda: (w.astype(np.float32) * c.astype(np.float32)).astype(BF16),
        "mxfp4": lambda: mxfp4(blocks, mx_scales),
        "nvfp4": lambda: (fp4_values(packed).reshape(N, N // 16, 16) *
                          (nv_scales.astype(np.float32) / np.float32(2688.0))[..., None]
                          ).reshape(N, N).astype(BF16),
        "mxfp4_experts": lambda: mxfp4(experts, expert_scales),
    }


def main():
    args = list(sys.argv[1:])
    reps = 7
    if "--reps" in args:
        i = args.index("--reps")
        reps = int(args[i + 1])
        del args[i:i + 2]
    build = args[0] if args else "build"
    binary = os.path.join(build, "bench", "quant", "bench_quant")
    with tempfile.TemporaryDirectory() as folder:
        rows = [json.loads(line) for line in
                subprocess.run([binary, "--reps", str(reps), "--dump", folder], check=True,
                               capture_output=True, text=True).stdout.splitlines()
                if line.startswith("{")]
        oracle = numpy_cases(folder)
        numpy_gbps = {}
        for row in rows:
            numpy_gbps[row["case"]] = row["bytes"] / median_seconds(oracle[row["case"]],
                                                                     max(3, reps // 2)) / 1e9
    threads = rows[0]["threads"] if rows else 0
    print(f"dequantize to BF16, {threads} threads, median of {reps} runs "
          f"(GB/s = bytes read + written per second)\n")
    print("| format | input | d9d GB/s | memcpy GB/s | d9d / memcpy | d9d / memcpy, one core "
          "(CPU time) | numpy GB/s | d9d / numpy |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        np_gbps = numpy_gbps[row["case"]]
        print(f"| {row['case']} | {CASES[row['case']]} | {row['gbps']:.1f} | "
              f"{row['memcpy_gbps']:.1f} | {row['gbps'] / row['memcpy_gbps']:.2f} | "
              f"{row['core_gbps']:.1f} / {row['core_memcpy_gbps']:.1f} = "
              f"{row['core_gbps'] / row['core_memcpy_gbps']:.2f} | "
              f"{np_gbps:.2f} | {row['gbps'] / np_gbps:.1f}x |")


if __name__ == "__main__":
    main()
