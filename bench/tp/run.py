#!/usr/bin/env python3
"""Tensor- and expert-parallel loading: each rank reads only its slices (Note [slice pushdown]).

  .venv/bin/python3 bench/tp/run.py [BUILD_DIR] [--dir DIR] [--tp 1,2,4,8] [--model llama|moe]
                                    [--rounds 3]

The checkpoints are the conversion benchmark's (bench/convert/run.py, cached in DIR, default
build-bench-convert/): llama, about 2 GB with Llama-3.2-1B's shapes (32 heads, 8 KV heads, tied
embeddings, a 32000-token vocabulary), or moe, the Qwen3-MoE-shaped one (128 experts a layer,
1.99 GB); a config.json is added to the llama one where it has none. For each tp, from a cold page
cache (every shard dropped with posix_fadvise DONTNEED first):

  pushdown     `mpirun -np tp d9d load CKPT --spec llama_tp` (moe: qwen3_moe_tp --set ep=tp):
               each rank loads its share in the per-rank fused layout, reading only its slices
  whole        the same with --no-pushdown: every rank reads its inputs whole and slices after,
               what loaders without slice pushdown do (the issue's "read the whole tensors and
               slice after")

Per rank, GNU time gives the block input (bytes read from the disk) and the peak RSS; the job's
wall time is mpirun's. The table has the medians over --rounds of: bytes read per rank (mean and
largest), their ratio to the checkpoint's bytes / tp (the ideal share), the sum over ranks, the
seconds and the largest peak RSS of a rank. `d9d plan --set tp=N --json`'s per-rank read_bytes is
printed beside, as the plan's own forecast.
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
sys.path.insert(0, os.path.join(ROOT, "bench", "convert"))
import run as convert_bench  # noqa: E402  (bench/convert/run.py: the checkpoints)

LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
                "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 8192,
                "num_hidden_layers": 16, "tie_word_embeddings": True, "vocab_size": 32000,
                "torch_dtype": "bfloat16"}
MPI = ["mpirun", "--oversubscribe", "--bind-to", "none"]
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}


def checkpoint(model, directory):
    if model == "llama":
        src = os.path.join(directory, "llama-16l")
        if not os.path.exists(src):
            convert_bench.make_checkpoint(src, 16)
        config = os.path.join(src, "config.json")
        if not os.path.exists(config):
            with open(config, "w") as fh:
                json.dump(LLAMA_CONFIG, fh, indent=2)
        return src, "llama_tp"
    src = os.path.join(directory, "qwen3moe-9l-128e")
    if not os.path.exists(src):
        convert_bench.make_moe_checkpoint(src, 9, 128)
    return src, "qwen3_moe_tp"


def drop(src):
    for name in os.listdir(src):
        fd = os.open(os.path.join(src, name), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def run_job(d9d, src, spec, tp, pushdown, extra):
    """One cold job: (seconds, [(rank, bytes read, peak RSS bytes)])."""
    drop(src)
    with tempfile.TemporaryDirectory() as tmp:
        # Each rank's GNU time report to a file of its own (OMPI_COMM_WORLD_RANK names it).
        wrapper = os.path.join(tmp, "timed.sh")
        with open(wrapper, "w") as fh:
            fh.write('#!/bin/sh\nexec /usr/bin/time -f "%I %M" -o "$TIMES/$OMPI_COMM_WORLD_RANK" "$@"\n')
        os.chmod(wrapper, 0o755)
        times = os.path.join(tmp, "times")
        os.makedirs(times)
        args = [d9d, "load", src, "--spec", spec, "--no-progress", *extra]
        if not pushdown:
            args.append("--no-pushdown")
        if tp == 1:  # one process: tp=1 is the spec's default
            cmd = ["env", "OMPI_COMM_WORLD_RANK=0", wrapper, *args]
        else:
            cmd = [*MPI, "-np", str(tp), wrapper, *args]
        env = dict(os.environ, TIMES=times, **MPI_ENV)
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        ranks = []
        for r in range(tp):
            with open(os.path.join(times, str(r))) as fh:
                blocks, rss_kb = fh.read().split()[-2:]
            ranks.append((r, int(blocks) * 512, int(rss_kb) * 1024))
        return seconds, ranks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build", nargs="?", default="build")
    ap.add_argument("--dir", default=os.path.join(ROOT, "build-bench-convert"))
    ap.add_argument("--tp", default="1,2,4,8")
    ap.add_argument("--model", choices=["llama", "moe"], default="llama")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    d9d = os.path.abspath(os.path.join(args.build, "d9d", "cli", "d9d"))
    src, spec = checkpoint(args.model, args.dir)
    total = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src)
                if f.endswith(".safetensors"))
    print(f"checkpoint: {src}, {total / 1e9:.2f} GB ({spec}); load average "
          f"{os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d')}\n")
    rows = []
    for tp in (int(x) for x in args.tp.split(",")):
        extra = ["--set", f"ep={tp}"] if args.model == "moe" else []
        plan = json.loads(subprocess.run(
            [d9d, "plan", src, "--spec", spec, "--set", f"tp={tp}", *extra, "--json"],
            capture_output=True, text=True, check=True).stdout)
        planned = max((r["read_bytes"] for r in plan.get("ranks", [])), default=plan["read_bytes"])
        for pushdown in (True, False):
            runs = [run_job(d9d, src, spec, tp, pushdown, extra) for _ in range(args.rounds)]
            mean_read = statistics.median(statistics.mean(b for _, b, _ in ranks) for _, ranks in runs)
            max_read = statistics.median(max(b for _, b, _ in ranks) for _, ranks in runs)
            sum_read = statistics.median(sum(b for _, b, _ in ranks) for _, ranks in runs)
            rss = statistics.median(max(m for _, _, m in ranks) for _, ranks in runs)
            seconds = statistics.median(s for s, _ in runs)
            rows.append((tp, "pushdown" if pushdown else "whole, sliced after", mean_read, max_read,
                         max_read / (total / tp), sum_read, seconds, rss,
                         planned if pushdown else None))
            print(f"tp={tp} {rows[-1][1]}: read per rank {mean_read / 1e6:.0f} MB (largest "
                  f"{max_read / 1e6:.0f} MB = {rows[-1][4]:.2f}x of 1/tp), {seconds:.2f} s",
                  flush=True)
    print()
    print("| tp | ranks read | read per rank (mean / largest) | largest / (checkpoint / tp) | "
          "read by all ranks | plan's forecast per rank | seconds | peak RSS of a rank |")
    print("|---|---|---|---|---|---|---|---|")
    for tp, mode, mean_read, max_read, ratio, sum_read, seconds, rss, planned in rows:
        print(f"| {tp} | {mode} | {mean_read / 1e6:.0f} / {max_read / 1e6:.0f} MB | {ratio:.2f} | "
              f"{sum_read / 1e9:.2f} GB | {'' if planned is None else f'{planned / 1e6:.0f} MB'} | "
              f"{seconds:.2f} | {rss / 1e6:.0f} MB |")


if __name__ == "__main__":
    main()
