#!/usr/bin/env python3
"""Cold and warm loading: `d9d load` with each read backend beside Python safetensors and the
machine's limits, in one run.

  .venv/bin/python3 bench/io/cold.py [BUILD_DIR] [--dir DIR] [--gb 2] [--rounds 3]

The checkpoint is io.py's (about --gb GB, 4 shards of ~600 MB, cached in DIR). Before every cold
run each shard is dropped from the page cache (posix_fadvise DONTNEED: no root needed). Per round:
  cold  dd iflag=direct bs=8M of every shard to /dev/null, one after another (the disk's limit for
        one reader past the page cache); `d9d load CKPT --cold --io B` for B = auto, uring,
        direct, pread, mmap (every tensor into host buffers of its own, its own figure: the load,
        not the allocation); safetensors.numpy.load_file of every shard in a new process. The
        order turns by one each round (a virtual disk's host may cache what was just read).
  warm  (the files in the page cache) the pread limit (bench_io pread: the data sections into
        memory faulted in before timing), Checkpoint::read_into into such buffers (bench_io
        into), and a fresh process's first load: `d9d load --io auto` (new buffers) and Python's
        load_file
Prints medians and ratios as a Markdown table.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def make_checkpoint(path, gb):
    """io.py's checkpoint (bench/io/io.py: its name hides it from a plain import)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_io", os.path.join(HERE, "io.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_checkpoint(path, gb)


PY_COLD = r"""
import glob, json, os, sys, time
from safetensors.numpy import load_file
files = sorted(glob.glob(os.path.join(sys.argv[1], "*.safetensors")))
t0 = time.perf_counter()
tensors = [load_file(f) for f in files]
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def drop(files):
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def d9d_load(d9d, ckpt, *extra):
    out = subprocess.run([d9d, "load", ckpt, "--no-progress", *extra], capture_output=True,
                         text=True)
    if out.returncode != 0:
        sys.exit(f"d9d load failed: {out.stderr}")
    m = re.search(r"in (\d+\.\d+) s: ", out.stdout.strip().splitlines()[-1])
    return float(m.group(1))


def bench_io(build, *args):
    out = subprocess.run([os.path.join(build, "bench", "io", "bench_io"), *map(str, args)],
                         capture_output=True, text=True, check=True)
    return statistics.median(json.loads(out.stdout)["times"])


def python_load(ckpt):
    out = subprocess.run([sys.executable, "-c", PY_COLD, ckpt], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)["seconds"]


BACKENDS = ["auto", "uring", "direct", "pread", "mmap"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build", nargs="?", default=os.path.join(ROOT, "build"))
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "d9d-bench-io"))
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    d9d = os.path.join(args.build, "d9d", "cli", "d9d")
    ckpt = os.path.join(args.dir, "ckpt")
    print(f"preparing {args.gb} GB checkpoint in {ckpt} (cached) ...", file=sys.stderr)
    make_checkpoint(ckpt, args.gb)
    os.sync()
    files = sorted(os.path.join(ckpt, f) for f in os.listdir(ckpt) if f.endswith(".safetensors"))
    nbytes = sum(os.path.getsize(f) for f in files)
    t = {}

    def record(key, seconds):
        t.setdefault(key, []).append(seconds)

    def dd():
        drop(files)
        t0 = time.perf_counter()
        for f in files:
            subprocess.run(["dd", f"if={f}", "of=/dev/null", "iflag=direct", "bs=8M"],
                           check=True, capture_output=True)
        return time.perf_counter() - t0

    def python_cold():
        drop(files)
        return python_load(ckpt)

    cold = [("dd", dd), ("python cold", python_cold)]
    cold += [(f"cold {b}", lambda b=b: d9d_load(d9d, ckpt, "--cold", "--io", b)) for b in BACKENDS]
    for r in range(args.rounds):
        # A different order each round: a virtual disk's host may cache what the last run read.
        for key, run in cold[r % len(cold):] + cold[:r % len(cold)]:
            record(key, run())
        d9d_load(d9d, ckpt, "--io", "pread")  # into the page cache
        record("pread limit", bench_io(args.build, "pread", ckpt, 3, os.cpu_count()))
        record("read_into", bench_io(args.build, "into", ckpt, 3))
        record("warm auto", d9d_load(d9d, ckpt, "--io", "auto"))
        record("python warm", python_load(ckpt))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in t.items()),
              file=sys.stderr)
    rate = {k: nbytes / statistics.median(v) / 1e9 for k, v in t.items()}
    print(f"\n{nbytes / 1e9:.2f} GB in {len(files)} shards, median of {args.rounds} rounds\n")
    print("| cold (page cache dropped before each) | GB/s | of dd | vs Python |")
    print("|---|---:|---:|---:|")
    print(f"| `dd iflag=direct bs=8M` (one reader's limit) | {rate['dd']:.2f} | 1.00 | |")
    for b in BACKENDS:
        k = f"cold {b}"
        print(f"| `d9d load --cold --io {b}` | {rate[k]:.2f} | {rate[k] / rate['dd']:.2f} | "
              f"{rate[k] / rate['python cold']:.2f}x |")
    print(f"| Python safetensors `load_file` | {rate['python cold']:.2f} | "
          f"{rate['python cold'] / rate['dd']:.2f} | 1.00x |")
    print()
    print("| warm (page cache) | GB/s | of the pread limit | vs Python |")
    print("|---|---:|---:|---:|")
    print(f"| pread into faulted memory (the limit) | {rate['pread limit']:.2f} | 1.00 | |")
    print(f"| `Checkpoint::read_into` (an engine's buffers) | {rate['read_into']:.2f} | "
          f"{rate['read_into'] / rate['pread limit']:.2f} | |")
    print(f"| `d9d load` (a fresh process, new buffers) | {rate['warm auto']:.2f} | "
          f"{rate['warm auto'] / rate['pread limit']:.2f} | "
          f"{rate['warm auto'] / rate['python warm']:.2f}x |")
    print(f"| Python safetensors `load_file` (a fresh process) | {rate['python warm']:.2f} | "
          f"{rate['python warm'] / rate['pread limit']:.2f} | 1.00x |")


if __name__ == "__main__":
    main()
