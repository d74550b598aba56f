#!/usr/bin/env python3
"""Crash safety: `d9d convert` killed with SIGKILL in the middle of writing leaves no file under a
final name (no shard, no index, no conversion record); running it again succeeds, removes the
dead run's temporaries, and writes the same checkpoint as a conversion that was never
interrupted.

The source is a few hundred MB (a Llama shape with random bits, written by Python safetensors) so
that a conversion takes long enough to be caught mid-write; the test polls the destination for
the writer's temporary files and kills the process while they are there.

  python3 crash.py D9D SPECS_DIR
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time

import numpy as np

from clitest import (D9D, check, d9d, d9d_ok, final_files, finish, is_temporary, llama_state,
                     save_hub_sharded, spec)

LLAMA = spec("llama_hf_to_fused.json")


def temporaries(out):
    return sorted(n for n in os.listdir(out) if is_temporary(n)) if os.path.isdir(out) else []


def convert_and_kill(src, out, when, what):
    """Starts a conversion, waits until `when(temporaries)` holds while it runs, SIGKILLs it.
    Returns False when the conversion finished before the kill (nothing tested)."""
    proc = subprocess.Popen([D9D, "convert", src, out, "--spec", LLAMA, "--shard-size", "80MB",
                             "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    seen = []
    while proc.poll() is None and time.monotonic() < deadline:
        seen = temporaries(out)
        if when(seen):
            break
        time.sleep(0.001)
    if proc.poll() is not None:
        print(f"note: {what}: the conversion ended (exit {proc.returncode}) before the kill")
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = temporaries(out)
    print(f"{what}: killed with temporaries {seen}; left behind: {left}")
    check(final_files(out) == [], f"{what}: nothing under a final name ({final_files(out)})")
    return True


with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "src")
    rng = np.random.default_rng(7)
    # About 400 MB: 1024 hidden, 10 layers, vocab 32000, BF16 random bits.
    state = llama_state(rng, hidden=1024, layers=10, heads=16, kv_heads=4, intermediate=2816,
                        vocab=32000, random_bits=True)
    save_hub_sharded(state, src, max_shard_size=100_000_000)
    del state
    fresh = os.path.join(tmp, "fresh")
    t0 = time.monotonic()
    d9d_ok("convert", src, fresh, "--spec", LLAMA, "--shard-size", "80MB", "--no-progress")
    took = time.monotonic() - t0
    print(f"an uninterrupted conversion takes {took:.2f} s")
    shards = [n for n in final_files(fresh) if n.endswith(".safetensors")]
    check(len(shards) >= 4, f"the conversion writes several shards ({len(shards)})")

    out = os.path.join(tmp, "out")
    last = len(shards)
    # Killed while the first shard is being written, once a shard is complete (under its
    # temporary name), and while the last shard is being written (just before the renames).
    points = [("first shard being written", lambda t: len(t) >= 1),
              ("a shard complete", lambda t: any(n.startswith(".d9d-shard-") for n in t)),
              ("last shard being written",
               lambda t: any(f"-0-{last}.safetensors.d9d-tmp-" in n for n in t))]
    tested = 0
    killed = False
    for what, when in points:
        killed = convert_and_kill(src, out, when, what)
        tested += killed
        if not killed:  # it finished: the next attempt starts from an empty directory
            shutil.rmtree(out)
    if not killed:  # the rerun below must find a dead run's temporaries
        killed = convert_and_kill(src, out, points[0][1], points[0][0] + " (again)")
    check(tested >= 2, f"at least two kills landed mid-write ({tested})")
    check(killed, "the last attempt was killed, leaving its temporaries for the rerun")

    # Running again succeeds, sweeps the dead runs' temporaries, and writes the same checkpoint.
    r = d9d("convert", src, out, "--spec", LLAMA, "--shard-size", "80MB", "--no-progress")
    check(r.returncode == 0, f"the rerun succeeds ({r.stderr.strip()})")
    check(temporaries(out) == [], f"no temporaries after the rerun ({temporaries(out)})")
    check(final_files(out) == final_files(fresh), "the rerun writes the same files")
    r = d9d("verify", out, fresh, "--no-progress")
    check(r.returncode == 0, f"the rerun equals a fresh conversion ({r.stdout.strip()})")
    for name in ("model.safetensors.index.json", "d9d-conversion.json"):
        check(open(os.path.join(out, name)).read() == open(os.path.join(fresh, name)).read(),
              f"{name} identical")

finish("cli_crash")
