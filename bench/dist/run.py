#!/usr/bin/env python3
"""The distributed benchmark: `mpirun -np N d9d convert` of the 2 GB synthetic checkpoint at 1, 2
and 4 ranks, the bytes each rank reads, and the MPI backend's all-gather against MPI_Allgather.

  .venv/bin/python3 bench/dist/run.py [BUILD_DIR] [--dir DIR] [--runs 3]

The source is bench/convert's checkpoint (Llama-3.2-1B shapes, 16 layers, BF16 random bits, about
2 GB in 1 GB shards; made once and cached in DIR). For each rank count:

  time         `d9d convert SRC OUT --spec llama_hf_to_fused.json --shard-size 1GiB` (fsync on,
               the defaults otherwise) under `mpirun --oversubscribe --bind-to none -np N`, and
               without mpirun for the single process; the source page-cached, the median of --runs
               measured runs after a discarded one, output removed and `sync`ed between runs
  bytes read   one run of `bench_dist convert` (the same library call) on a cold page cache (the
               source's pages dropped with posix_fadvise): each rank's /proc/self/io read_bytes

Every output is compared byte for byte with the single-process one. Then `bench_dist allgather`
at 2 and 4 ranks: ProcessGroup::all_gather_into_tensor against MPI_Allgather of the same buffers.
Results are printed as Markdown tables. This machine's core count is printed with them: with
fewer cores than ranks the ranks share cores (--oversubscribe), and the numbers say so.
"""
import argparse
import filecmp
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SPEC = os.path.join(ROOT, "examples", "specs", "llama_hf_to_fused.json")
MPI = ["mpirun", "--oversubscribe", "--bind-to", "none"]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def convert_bench():
    spec = importlib.util.spec_from_file_location("convert_bench",
                                                  os.path.join(ROOT, "bench", "convert", "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settle(out):
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["sync"])


def drop_cache(src):
    for f in os.listdir(src):
        fd = os.open(os.path.join(src, f), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def run(cmd):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0, r.stdout


def same(a, b):
    names = sorted(os.listdir(a))
    return names == sorted(os.listdir(b)) and all(
        filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False) for n in names)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", nargs="?", default="build")
    ap.add_argument("--dir", default=os.path.join(ROOT, "build-bench-dist"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ranks", default="1,2,4")
    args = ap.parse_args()
    build = os.path.join(ROOT, args.build)
    d9d = os.path.join(build, "d9d", "cli", "d9d")
    bench = os.path.join(build, "bench", "dist", "bench_dist")
    for exe in (d9d, bench):
        if not os.access(exe, os.X_OK):
            sys.exit(f"{exe} is missing: build it first (ninja -C {args.build})")
    cb = convert_bench()
    os.makedirs(args.dir, exist_ok=True)
    src = os.path.join(args.dir, "llama-16l")
    if not os.path.exists(src):
        print(f"making the source checkpoint in {src} ...", file=sys.stderr)
        cb.make_checkpoint(src, 16)
    nbytes = cb.source_bytes(src)
    out = os.path.join(args.dir, "out")
    reference = os.path.join(args.dir, "single")
    ranks = [int(n) for n in args.ranks.split(",")]
    print(f"machine: {os.cpu_count()} cores, load {cb.loadavg()}; source {nbytes / 1e9:.2f} GB")

    settle(reference)
    run([d9d, "convert", src, reference, "--spec", SPEC, "--shard-size", "1GiB", "--no-progress"])
    rows = []
    for n in ranks:
        cmds = [("d9d convert", [d9d])] if n == 1 else []
        cmds.append((f"mpirun -np {n} d9d convert", [*MPI, "-np", str(n), d9d]))
        for name, prefix in cmds:
            cb.warm(src)
            times = []
            for i in range(args.runs + 1):
                settle(out)
                seconds, _ = run([*prefix, "convert", src, out, "--spec", SPEC, "--shard-size",
                                  "1GiB", "--no-progress"])
                if i > 0:  # the first is a warm-up
                    times.append(seconds)
            identical = same(reference, out)
            settle(out)
            # The bytes each rank reads, on a cold page cache.
            drop_cache(src)
            _, stdout = run([*MPI, "-np", str(n), bench, "convert", src, out, SPEC])
            report = json.loads(stdout.strip().splitlines()[-1])
            settle(out)
            rows.append((name, n, statistics.median(times), min(times), identical, report))

    print()
    print("| run | ranks | median s | best s | GB/s | vs 1 process | bytes read per rank (MB, cold cache) | sum | identical |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---|")
    base = rows[0][2]
    for name, n, med, best, identical, report in rows:
        per = report["read_bytes"]
        print(f"| {name} | {n} | {med:.2f} | {best:.2f} | {nbytes / med / 1e9:.2f} | "
              f"{base / med:.2f}x | {', '.join(f'{b / 1e6:.0f}' for b in per)} | "
              f"{sum(per) / 1e6:.0f} | {'yes' if identical else 'NO'} |")

    print()
    print("| ranks | bytes per rank | d9d all_gather_into_tensor GB/s | MPI_Allgather GB/s | time ratio d9d / MPI |")
    print("|---:|---:|---:|---:|---:|")
    for n in [r for r in ranks if r > 1]:
        _, stdout = run([*MPI, "-np", str(n), bench, "allgather"])
        for line in stdout.strip().splitlines():
            r = json.loads(line)
            size = r["bytes_per_rank"]
            label = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
            print(f"| {n} | {label} | {r['d9d_GBps']:.2f} | {r['mpi_GBps']:.2f} | {r['ratio']:.3f} |")
    print(f"\nload after: {cb.loadavg()}")


if __name__ == "__main__":
    main()
