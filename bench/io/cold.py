#!/usr/bin/env python3
"""Cold-start loading: `d9d load --cold` beside Python safetensors and the disk's limit, in one run.

  .venv/bin/python3 bench/io/cold.py [BUILD_DIR] [--dir DIR] [--gb 2] [--rounds 3]

The checkpoint is io.py's (about --gb GB, ~600 MB shards, cached in DIR). Before every cold run
each shard is dropped from the page cache (posix_fadvise DONTNEED: no root needed). Per round:
  dd      dd iflag=direct bs=8M of every shard to /dev/null, one after another (the disk's limit
          for one reader without the page cache)
  d9d     d9d load CKPT --cold: every tensor into host buffers of its own (its own figure: the
          load, not the allocation of the buffers)
  python  safetensors.numpy.load_file of every shard after the same drop, in a new process
  warm    d9d load CKPT again, the files now in the page cache, and Python's load_file
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
    t = {"dd": [], "d9d": [], "python": [], "warm": [], "python warm": []}
    for r in range(args.rounds):
        drop(files)
        t0 = time.perf_counter()
        for f in files:
            subprocess.run(["dd", f"if={f}", "of=/dev/null", "iflag=direct", "bs=8M"],
                           check=True, capture_output=True)
        t["dd"].append(time.perf_counter() - t0)
        t["d9d"].append(d9d_load(d9d, ckpt, "--cold"))
        drop(files)
        out = subprocess.run([sys.executable, "-c", PY_COLD, ckpt], capture_output=True, text=True,
                             check=True)
        t["python"].append(json.loads(out.stdout)["seconds"])
        d9d_load(d9d, ckpt)  # into the page cache
        t["warm"].append(d9d_load(d9d, ckpt))
        out = subprocess.run([sys.executable, "-c", PY_COLD, ckpt], capture_output=True, text=True,
                             check=True)
        t["python warm"].append(json.loads(out.stdout)["seconds"])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in t.items()),
              file=sys.stderr)
    rate = {k: nbytes / statistics.median(v) / 1e9 for k, v in t.items()}
    print(f"\n{nbytes / 1e9:.2f} GB in {len(files)} shards, median of {args.rounds} rounds\n")
    print("| | GB/s | ratio |")
    print("|---|---:|---:|")
    print(f"| `dd iflag=direct bs=8M` (cold limit) | {rate['dd']:.2f} | 1.00 |")
    print(f"| `d9d load --cold` | {rate['d9d']:.2f} | {rate['d9d'] / rate['dd']:.2f} of dd |")
    print(f"| Python safetensors `load_file`, cold | {rate['python']:.2f} | "
          f"{rate['python'] / rate['dd']:.2f} of dd |")
    print(f"| d9d cold / Python cold | | {rate['d9d'] / rate['python']:.2f}x |")
    print(f"| `d9d load`, warm (page cache) | {rate['warm']:.2f} | "
          f"{rate['warm'] / rate['python warm']:.2f}x Python |")
    print(f"| Python safetensors `load_file`, warm | {rate['python warm']:.2f} | |")


if __name__ == "__main__":
    main()
