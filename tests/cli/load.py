#!/usr/bin/env python3
"""`d9d load` (README: From the shell): an engine's load from the shell.

  - every tensor (or every output of a spec) is loaded: the counts and bytes are the checkpoint's
    (or `plan --json`'s), each file is listed with how it was read (pread into the targets, or
    through the mapping for groups that move data), and the last line ends with the rate;
  - --cold drops the files from the page cache first: the process then reads the checkpoint's
    bytes from the disk (its block input, getrusage), and a warm load reads none;
  - a shard cut short is exit 1 naming the file, never SIGBUS; a CUDA device that is not there is
    exit 1 with a message.

  python3 load.py D9D SPECS_DIR
"""
import json
import os
import re
import resource
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
        check(any(re.fullmatch(rf"  {re.escape(shard)}  .* pread", line) for line in lines),
              f"{shard} is listed, read with pread into the targets ({r.stdout})")
    check(f"targets: {len(state)} tensors" in r.stdout, f"every tensor is a target ({r.stdout})")
    check(RATE.match(lines[-1]) is not None, f"the last line ends with the rate ({lines[-1]})")

    # ---- through a spec: its outputs --------------------------------------------------------------
    plan = json.loads(d9d_ok("plan", ck, "--spec", LLAMA, "--json").stdout)
    r = d9d_ok("load", ck, "--spec", LLAMA, "--no-progress")
    check(f"targets: {len(plan['outputs'])} tensors" in r.stdout,
          f"the spec's outputs are the targets ({r.stdout})")
    check("mmap" in r.stdout and "through " + LLAMA in r.stdout,
          f"fused groups read through the mapping, the spec named ({r.stdout})")

    # ---- --cold ---------------------------------------------------------------------------------
    r, warm = disk_read_bytes("load", ck, "--no-progress")
    check(r.returncode == 0 and warm < total // 10,
          f"a warm load reads (almost) nothing from the disk ({warm} of {total} bytes)")
    r, cold = disk_read_bytes("load", ck, "--cold", "--no-progress")
    check(r.returncode == 0 and "from a cold page cache" in r.stdout,
          f"--cold says so ({r.stdout.strip()} {r.stderr.strip()})")
    check(cold >= total * 0.9, f"--cold reads the checkpoint from the disk ({cold} of {total} bytes)")
    print(f"ok: warm load read {warm} bytes from the disk, --cold {cold} (the tensors: {total})")

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
