#!/usr/bin/env python3
"""`d9d load` (README: From the shell): an engine's load from the shell.

  - every tensor (or every output of a spec) is loaded: the counts and bytes are the checkpoint's
    (or `plan --json`'s), each file is listed with how the read engine read it (backend and
    bytes), and the last line ends with the rate;
  - --cold drops the files from the page cache first: the process then reads the checkpoint's
    bytes from the disk (its block input, getrusage), and a warm load reads none;
  - --io: each backend is the one listed for every file (or a note says why another was used);
    `auto` reads page-cached files with pread and cold ones past the page cache (uring or
    direct), and every backend reads the checkpoint's bytes once from a cold cache;
  - a file system that refuses O_DIRECT (ramfs, mounted when the test runs as root) is read with
    pread under --io direct and uring, with a note saying so;
  - a shard cut short is exit 1 naming the file, never SIGBUS; a CUDA device that is not there is
    exit 1 with a message.

  python3 load.py D9D SPECS_DIR
"""
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile

import numpy as np

from clitest import (check, d9d, d9d_ok, finish, llama_state, save_hub_sharded, spec)

LLAMA = spec("llama_hf_to_fused.json")
RATE = re.compile(r"^loaded .* in \d+\.\d\d s: \d+\.\d\d GB/s$")


def disk_read_bytes(*args):
    """Runs d9d; returns (CompletedProcess, bytes its process read from the block device)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_inblock
    r = d9d(*args)
    return r, (resource.getrusage(resource.RUSAGE_CHILDREN).ru_inblock - before) * 512


# Beside the build (meson test runs in it), on the disk where the sources are, not on a tmpfs /tmp:
# the page cache is what --cold is about.
with tempfile.TemporaryDirectory(dir=os.getcwd()) as tmp:
    rng = np.random.default_rng(3)
    ck = os.path.join(tmp, "ck")
    state = llama_state(rng, hidden=256, layers=4, heads=8, kv_heads=2, intermediate=704,
                        vocab=4000, random_bits=True)
    save_hub_sharded(state, ck, 3_000_000)
    os.sync()  # DONTNEED drops clean pages only
    total = sum(v.nbytes for v in state.values())
    shards = sorted(n for n in os.listdir(ck) if n.endswith(".safetensors"))
    check(len(shards) >= 3, f"a sharded checkpoint ({shards})")

    # ---- every tensor, as it is -----------------------------------------------------------------
    r = d9d_ok("load", ck, "--no-progress")
    lines = r.stdout.strip().splitlines()
    check(lines[0].startswith(f"d9d load: {ck} ({len(shards)} files,") and lines[0].endswith("-> cpu"),
          f"the first line names the checkpoint and the device ({lines[0]})")
    for shard in shards:
        check(any(re.fullmatch(rf"  {re.escape(shard)}  pread \S+ [kMG]?B", line) for line in lines),
              f"{shard} is listed, read (page-cached) with pread ({r.stdout})")
    check(f"targets: {len(state)} tensors" in r.stdout, f"every tensor is a target ({r.stdout})")
    check(RATE.match(lines[-1]) is not None, f"the last line ends with the rate ({lines[-1]})")

    # ---- through a spec: its outputs --------------------------------------------------------------
    plan = json.loads(d9d_ok("plan", ck, "--spec", LLAMA, "--json").stdout)
    r = d9d_ok("load", ck, "--spec", LLAMA, "--no-progress")
    check(f"targets: {len(plan['outputs'])} tensors" in r.stdout,
          f"the spec's outputs are the targets ({r.stdout})")
    check("through " + LLAMA in r.stdout and all(f"  {s}  pread " in r.stdout for s in shards),
          f"the spec named, every file listed ({r.stdout})")

    # ---- --cold ---------------------------------------------------------------------------------
    r, warm = disk_read_bytes("load", ck, "--no-progress")
    check(r.returncode == 0 and warm < total // 10,
          f"a warm load reads (almost) nothing from the disk ({warm} of {total} bytes)")
    r, cold = disk_read_bytes("load", ck, "--cold", "--no-progress")
    check(r.returncode == 0 and "from a cold page cache" in r.stdout,
          f"--cold says so ({r.stdout.strip()} {r.stderr.strip()})")
    check(cold >= total * 0.9, f"--cold reads the checkpoint from the disk ({cold} of {total} bytes)")
    print(f"ok: warm load read {warm} bytes from the disk, --cold {cold} (the tensors: {total})")

    # ---- --io -----------------------------------------------------------------------------------
    def listed(stdout, shard):
        return next(line for line in stdout.splitlines() if line.startswith(f"  {shard}  "))

    for io in ["mmap", "pread", "direct", "uring"]:
        r, cold = disk_read_bytes("load", ck, "--cold", "--io", io, "--no-progress")
        check(r.returncode == 0, f"--io {io} loads ({r.stderr.strip()})")
        for shard in shards:
            line = listed(r.stdout, shard)
            check(re.fullmatch(rf"  {re.escape(shard)}  {io} \S+ [kMG]?B", line) is not None or
                  "(" in line, f"--io {io}: {shard} read with {io}, or a note says why not ({line})")
        check(cold >= total * 0.9 and cold <= total * 1.5 + (4 << 20),
              f"--io {io} --cold reads the checkpoint from the disk once ({cold} of {total} bytes)")
    r = d9d_ok("load", ck, "--cold", "--io", "auto", "--no-progress")
    check(all(re.search(r"(uring|direct) \S+ [kMG]?B", listed(r.stdout, s)) for s in shards),
          f"auto reads cold files past the page cache ({r.stdout})")
    # O_DIRECT reads leave the page cache as it was (cold): pread brings the files in.
    d9d_ok("load", ck, "--io", "pread", "--no-progress")
    r = d9d_ok("load", ck, "--io", "auto", "--no-progress")
    check(all(re.fullmatch(rf"  {re.escape(s)}  pread \S+ [kMG]?B", listed(r.stdout, s))
              for s in shards), f"auto reads page-cached files with pread ({r.stdout})")
    r = d9d("load", ck, "--io", "aio", "--no-progress")
    check(r.returncode == 2 and "--io" in r.stderr, f"an unknown backend is a usage error ({r.stderr})")

    # ---- a file system that refuses O_DIRECT (ramfs; tmpfs takes it since Linux 6.6) -----------
    ram = os.path.join(tmp, "ramfs")
    os.makedirs(ram)
    mounted = subprocess.run(["mount", "-t", "ramfs", "none", ram], capture_output=True).returncode == 0
    if not mounted:
        print("note: ramfs cannot be mounted here (not root?): the O_DIRECT fallback is not run")
    else:
        try:
            shutil.copytree(ck, os.path.join(ram, "ck"))
            for io in ["direct", "uring"]:
                r = d9d_ok("load", os.path.join(ram, "ck"), "--io", io, "--no-progress")
                for shard in shards:
                    line = listed(r.stdout, shard)
                    check(re.match(rf"  {re.escape(shard)}  pread \S+ [kMG]?B \(O_DIRECT refused "
                                   r"\(Invalid argument\): read with pread\)$", line) is not None,
                          f"--io {io} on ramfs: read with pread, with a note ({line})")
            print("ok: O_DIRECT refused by ramfs: pread, with a note")
        finally:
            subprocess.run(["umount", ram], check=True)

    # ---- failures -------------------------------------------------------------------------------
    r = d9d("load", ck, "--device", "cuda:0", "--no-progress")
    check(r.returncode == 0 or (r.returncode == 1 and "d9d: error:" in r.stderr),
          f"cuda:0: loads where there is a GPU, else exit 1 with a message ({r.returncode}: "
          f"{r.stderr.strip()})")
    r = d9d("load", ck, "--device", "tpu", "--no-progress")
    check(r.returncode == 2, f"an unknown device is a usage error ({r.returncode})")
    victim = os.path.join(ck, shards[1])
    with open(victim, "r+b") as fh:
        fh.truncate(os.path.getsize(victim) // 2)
    r = d9d("load", ck, "--no-progress")
    check(r.returncode == 1 and shards[1] in r.stderr,
          f"a shard cut short: exit 1 naming it, no SIGBUS ({r.returncode}: {r.stderr.strip()})")

finish("cli_load")
