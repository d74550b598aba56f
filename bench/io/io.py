#!/usr/bin/env python3
"""The io benchmark: d9d beside Python safetensors and the machine's pread limit, in one run.

  .venv/bin/python3 bench/io/io.py [BUILD_DIR] [--dir DIR] [--gb 2] [--rounds 3]

Makes (once, cached in DIR) a multi-shard checkpoint of about --gb GB with huggingface_hub's
sharding, warms the page cache, then for --rounds rounds runs, each in a fresh process:
  d9d      Checkpoint::open + load_all: every tensor into owned contiguous host memory
  python   safetensors.numpy.load_file on every shard (the reference, numpy)
  pread    pread of the same bytes into one pre-faulted buffer, 1 and 2 threads (the limit)
and, per round, one load by each side in a new process after a pause (memory the system has
reclaimed: what a one-shot loader meets), and the header benchmark: open + validate a
100,000-tensor file (d9d, and Python's safe_open). Prints medians and ratios as a Markdown table.
All reads are from the page cache.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

PY_LOAD = r"""
import json, resource, sys, time, glob, os
from safetensors.numpy import load_file
files = sorted(glob.glob(os.path.join(sys.argv[1], "*.safetensors")))
times = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    tensors = [load_file(f) for f in files]
    times.append(time.perf_counter() - t0)
    del tensors
print(json.dumps({"times": times,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
"""

PY_HEADER = r"""
import json, sys, time
from safetensors import safe_open
times = []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    with safe_open(sys.argv[1], framework="np") as f:
        n = len(f.keys())
    times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "tensors": n}))
"""


def make_checkpoint(path, gb):
    """A Llama-like mix of large BF16-sized (stored as F16) matrices and small vectors."""
    from huggingface_hub import split_state_dict_into_shards_factory
    from safetensors.numpy import save_file

    stamp = os.path.join(path, f"done-{gb}")
    if os.path.exists(stamp):
        return
    os.makedirs(path, exist_ok=True)
    for f in os.listdir(path):
        os.remove(os.path.join(path, f))
    rng = np.random.default_rng(0)
    state = {}
    total = 0
    layer = 0
    target = int(gb * 1e9)
    while total < target:
        for name, shape in (("self_attn.q_proj.weight", (2048, 2048)),
                            ("self_attn.k_proj.weight", (512, 2048)),
                            ("self_attn.v_proj.weight", (512, 2048)),
                            ("self_attn.o_proj.weight", (2048, 2048)),
                            ("mlp.gate_proj.weight", (5632, 2048)),
                            ("mlp.up_proj.weight", (5632, 2048)),
                            ("mlp.down_proj.weight", (2048, 5632)),
                            ("input_layernorm.weight", (2048,)),
                            ("post_attention_layernorm.weight", (2048,))):
            a = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16).view(np.float16)
            state[f"model.layers.{layer}.{name}"] = a
            total += a.nbytes
        layer += 1
    split = split_state_dict_into_shards_factory(
        state, get_storage_size=lambda a: a.nbytes,
        filename_pattern="model{suffix}.safetensors", max_shard_size=600_000_000)
    for filename, names in split.filename_to_tensors.items():
        save_file({k: state[k] for k in names}, os.path.join(path, filename),
                  metadata={"format": "pt"})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, fh, indent=2)
    open(stamp, "w").close()


def make_header_file(path):
    from safetensors.numpy import save_file
    if os.path.exists(path):
        return
    tensors = {f"model.layers.{i // 10}.block.{i % 10}.weight": np.zeros((2, 2), np.float16)
               for i in range(100_000)}
    save_file(tensors, path, metadata={"format": "pt"})


def warm(path):
    for f in sorted(os.listdir(path)):
        with open(os.path.join(path, f), "rb") as fh:
            while fh.read(64 << 20):
                pass


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build", nargs="?", default=os.path.join(ROOT, "build"))
    ap.add_argument("--bench", help="the bench_io binary (default BUILD/bench/io/bench_io)")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "d9d-bench-io"))
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    bench = args.bench or os.path.join(args.build, "bench", "io", "bench_io")
    ckpt = os.path.join(args.dir, "ckpt")
    header_file = os.path.join(args.dir, "header-100k.safetensors")
    print(f"preparing {args.gb} GB checkpoint in {ckpt} (cached) ...", file=sys.stderr)
    make_checkpoint(ckpt, args.gb)
    make_header_file(header_file)
    nbytes = sum(os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt)
                 if f.endswith(".safetensors"))
    shards = len([f for f in os.listdir(ckpt) if f.endswith(".safetensors")])
    warm(ckpt)

    results = {k: [] for k in ("d9d", "python", "pread1", "pread2", "fresh2", "into",
                               "d9d_cold", "python_cold", "hdr_d9d", "hdr_py")}
    rss = {}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds} ...", file=sys.stderr)
        d = run([bench, "materialize", ckpt, str(args.reps)])
        results["d9d"] += d["times"]
        rss["d9d"] = d["max_rss_mb"]
        tensor_bytes = d["bytes"]
        results["into"] += run([bench, "into", ckpt, str(args.reps)])["times"]
        p = run([sys.executable, "-c", PY_LOAD, ckpt, str(args.reps)])
        results["python"] += p["times"]
        rss["python"] = p["max_rss_mb"]
        for threads in (1, 2):
            q = run([bench, "pread", ckpt, str(args.reps), str(threads)])
            results[f"pread{threads}"] += q["times"]
        results["fresh2"] += run([bench, "pread", ckpt, str(args.reps), "2", "fresh"])["times"]
        time.sleep(3)  # let freed memory go back to the system
        results["d9d_cold"] += run([bench, "materialize", ckpt, "1"])["times"]
        time.sleep(3)
        results["python_cold"] += run([sys.executable, "-c", PY_LOAD, ckpt, "1"])["times"]
        results["hdr_d9d"] += run([bench, "header", header_file, str(args.reps * 3)])["times"]
        results["hdr_py"] += run([sys.executable, "-c", PY_HEADER, header_file,
                                  str(args.reps * 3)])["times"]

    med = {k: statistics.median(v) for k, v in results.items()}
    gbps = {k: tensor_bytes / med[k] / 1e9 for k in ("d9d", "python", "pread1", "pread2", "fresh2",
                                                           "into", "d9d_cold", "python_cold")}
    limit = max(gbps["pread1"], gbps["pread2"])
    print(f"\nMaterialize {tensor_bytes / 1e9:.2f} GB of tensors from {shards} shards "
          f"({nbytes / 1e9:.2f} GB on disk, page cache warm), {os.cpu_count()} cores; medians of "
          f"{args.rounds * args.reps} runs, each in fresh memory.\n")
    print("| what | median s | GB/s | d9d vs it | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    print(f"| d9d `Checkpoint::load_all` | {med['d9d']:.3f} | {gbps['d9d']:.2f} | 1.00x | {rss['d9d']} |")
    print(f"| d9d `Checkpoint::read_into` buffers allocated before (an engine's weights) | "
          f"{med['into']:.3f} | {gbps['into']:.2f} | - | - |")
    print(f"| Python safetensors `load_file` (numpy) | {med['python']:.3f} | {gbps['python']:.2f} | "
          f"{gbps['d9d'] / gbps['python']:.2f}x | {rss['python']} |")
    for t in (1, 2):
        print(f"| pread limit, {t} thread{'s' if t > 1 else ''}, pre-faulted buffer | "
              f"{med[f'pread{t}']:.3f} | {gbps[f'pread{t}']:.2f} | "
              f"{gbps['d9d'] / gbps[f'pread{t}']:.2f} of it | - |")
    print(f"| pread, 2 threads, into new memory (allocation timed) | {med['fresh2']:.3f} | "
          f"{gbps['fresh2']:.2f} | {gbps['d9d'] / gbps['fresh2']:.2f} of it | - |")
    print(f"| first load in a new process: d9d | {med['d9d_cold']:.3f} | {gbps['d9d_cold']:.2f} | "
          f"- | - |")
    print(f"| first load in a new process: Python | {med['python_cold']:.3f} | "
          f"{gbps['python_cold']:.2f} | {gbps['d9d_cold'] / gbps['python_cold']:.2f}x (d9d first "
          f"load vs it) | - |")
    print(f"\nHeader open + validate, 100,000 tensors ({os.path.getsize(header_file) / 1e6:.1f} MB "
          f"file): d9d {med['hdr_d9d'] * 1e3:.1f} ms, Python safe_open {med['hdr_py'] * 1e3:.1f} ms "
          f"({med['hdr_py'] / med['hdr_d9d']:.2f}x).")
    print(f"\nd9d / Python = {gbps['d9d'] / gbps['python']:.2f}x (goal >= 1.5x); "
          f"d9d / pread limit = {gbps['d9d'] / limit:.2f} (goal >= 0.8); "
          f"d9d / pread into fresh memory = {gbps['d9d'] / gbps['fresh2']:.2f}; "
          f"d9d read_into / pread limit = {gbps['into'] / limit:.2f}")


if __name__ == "__main__":
    main()
