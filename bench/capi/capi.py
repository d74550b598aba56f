#!/usr/bin/env python3
"""The C ABI from Python: python/d9d_ctypes.py beside safetensors.numpy.load_file on bench/io's
2 GB checkpoint, warm and cold.

  .venv/bin/python3 bench/capi/capi.py [BUILD_DIR] [--dir DIR] [--rounds 3] [--cold 5]

The checkpoint is bench/io/io.py's (Llama-shaped F16 matrices, about 2.07 GB in 4 shards split by
huggingface_hub; made once and cached in DIR, its own folder so that dropping its pages disturbs
no other benchmark). Each measurement runs in a fresh process and loads every tensor of every
shard into numpy arrays:

  d9d_ctypes.load      the ctypes module: d9d_stream_next's tensors through np.from_dlpack; no
                       copy, read-only arrays viewing the mapped files, each page faulted in by
                       d9d's reader threads before the tensor is handed out
  d9d_load_into        d9d_load_into through ctypes, its callback allocating a new np.empty per
                       tensor (owned, writable arrays: what load_file returns). numpy's
                       madvise(MADV_HUGEPAGE) on large arrays is turned off: on this VM it makes
                       the kernel compact memory on first touch (4x the system time of 4 KiB
                       pages, for any loader; io's Note [fresh memory] measured the same)
  d9d_load_into warm   the same into arrays allocated and touched before the clock starts (an
                       engine refilling the weights it holds)
  load_file            safetensors.numpy.load_file on every shard

Warm: the files page-cached, --rounds rounds of 3 runs each. Cold: before each of --cold runs the
files' pages are dropped (posix_fadvise DONTNEED), and the child's /proc/self/io read_bytes shows
that it read them from the disk. Prints medians and d9d / Python ratios as a Markdown table.
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# One run, in a fresh process: prints {"seconds", "bytes", "read_mb"}.
CHILD = r"""
import ctypes, glob, json, os, sys, time
import numpy as np
sys.path.insert(0, os.path.join(sys.argv[4], "python"))
import d9d_ctypes
what, ckpt, lib_path = sys.argv[1:4]

def read_mb():
    for line in open("/proc/self/io"):
        if line.startswith("read_bytes:"):
            return int(line.split()[1]) / 1e6

np._core.multiarray._set_madvise_hugepage(False)
lib = d9d_ctypes.library(lib_path)
lib.d9d_load_into.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_void_p, ctypes.c_void_p]
arrays = {}

@ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p,
                  ctypes.POINTER(d9d_ctypes.DLTensor), ctypes.POINTER(d9d_ctypes.DLTensor))
def target(user, name, spec, into):
    s = spec.contents
    if name not in arrays:  # the checkpoint is all F16
        arrays[name] = np.empty([s.shape[i] for i in range(s.ndim)], np.float16)
    into.contents.data = arrays[name].ctypes.data
    return 1 if allocate_only else 0

def load_into():
    if lib.d9d_load_into(ckpt.encode(), None, None, ctypes.cast(target, ctypes.c_void_p), None) != 0:
        raise RuntimeError(lib.d9d_last_error().decode())
    return arrays

allocate_only = what == "into_warm"
if allocate_only:  # every callback skips: the arrays are made, nothing is read
    for a in load_into().values():
        a.fill(0)
    allocate_only = False
before = read_mb()
t0 = time.perf_counter()
if what == "d9d":
    arrays = d9d_ctypes.load(ckpt, library_path=lib_path)
elif what.startswith("into"):
    arrays = load_into()
else:
    from safetensors.numpy import load_file
    arrays = {}
    for f in sorted(glob.glob(os.path.join(ckpt, "*.safetensors"))):
        arrays.update(load_file(f))
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "bytes": sum(a.nbytes for a in arrays.values()),
                  "read_mb": read_mb() - before}))
"""

NAMES = {"d9d": "`d9d_ctypes.load` (zero-copy, read-only views)",
         "into": "`d9d_load_into` via ctypes into new `np.empty` arrays",
         "into_warm": "`d9d_load_into` via ctypes into arrays allocated before",
         "python": "Python safetensors `load_file` (numpy)"}


def bench_io():
    spec = importlib.util.spec_from_file_location("bench_io_driver", os.path.join(ROOT, "bench", "io", "io.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drop_cache(ckpt):
    for f in os.listdir(ckpt):
        fd = os.open(os.path.join(ckpt, f), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def run(what, ckpt, lib):
    out = subprocess.run([sys.executable, "-c", CHILD, what, ckpt, lib, ROOT], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{what} failed: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build", nargs="?", default=os.path.join(ROOT, "build"))
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "d9d-bench-capi"))
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cold", type=int, default=5)
    args = ap.parse_args()
    lib = os.path.join(os.path.abspath(args.build), "libd9d.so")
    ckpt = os.path.join(args.dir, "ckpt")
    print(f"preparing {args.gb} GB checkpoint in {ckpt} (cached) ...", file=sys.stderr)
    io_driver = bench_io()
    io_driver.make_checkpoint(ckpt, args.gb)
    order = ("d9d", "into", "into_warm", "python")
    warm = {k: [] for k in order}
    cold = {k: [] for k in order}
    cold_read = {k: [] for k in order}
    io_driver.warm(ckpt)
    for r in range(args.rounds):
        print(f"warm round {r + 1}/{args.rounds} ...", file=sys.stderr)
        for what in order:
            for _ in range(3):
                result = run(what, ckpt, lib)
                warm[what].append(result["seconds"])
                nbytes = result["bytes"]
    for r in range(args.cold):
        print(f"cold run {r + 1}/{args.cold} ...", file=sys.stderr)
        for what in order:
            drop_cache(ckpt)
            result = run(what, ckpt, lib)
            cold[what].append(result["seconds"])
            cold_read[what].append(result["read_mb"])

    print(f"\nEvery tensor of {nbytes / 1e9:.2f} GB (4 shards) into numpy arrays, each run in a new "
          f"process, {os.cpu_count()} cores; medians of {args.rounds * 3} warm and {args.cold} cold runs.\n")
    print("| what | warm s | warm GB/s | warm vs Python | cold s | cold GB/s | cold vs Python | MB read cold |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    med_w = {k: statistics.median(v) for k, v in warm.items()}
    med_c = {k: statistics.median(v) for k, v in cold.items()}
    for what in order:
        print(f"| {NAMES[what]} | {med_w[what]:.3f} | {nbytes / med_w[what] / 1e9:.2f} | "
              f"{med_w['python'] / med_w[what]:.2f}x | {med_c[what]:.3f} | {nbytes / med_c[what] / 1e9:.2f} | "
              f"{med_c['python'] / med_c[what]:.2f}x | {statistics.median(cold_read[what]):.0f} |")


if __name__ == "__main__":
    main()
