#!/usr/bin/env python3
"""A full disk: `convert` into a tmpfs that the test mounts with too few inodes (2 and up) or too
few bytes (from too small for the first shard to just too small for the last small file), into
an empty directory and with --overwrite over an old checkpoint. Every run that fails exits 1 with
the system's reason and leaves nothing under a final name, no temporary and no lock file, and
the old checkpoint byte for byte; every run that succeeds leaves the whole new checkpoint. (d9d
reserves each shard's size when it creates it, so a full disk is met at a shard's start, never
half way through its bytes.) Mounting needs root: exit 77 (skipped) otherwise.

  python3 disk_full.py D9D SPECS_DIR
"""
import contextlib
import os
import subprocess
import tempfile

import numpy as np

from clitest import D9D, check, finish, llama_state, save_hub_sharded, spec
from oracle import skip  # tests/common, on the path clitest sets

LLAMA = spec("llama_hf_to_fused.json")
PAGE = 4096


def convert(src, out, *extra):
    return subprocess.run([D9D, "convert", src, out, "--spec", LLAMA, "--shard-size", "100KB",
                           "--no-progress", *extra], capture_output=True, text=True, timeout=120)


def files(out):
    return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))}


@contextlib.contextmanager
def tmpfs(where, size=None, inodes=None):
    os.makedirs(where, exist_ok=True)
    opts = ",".join([f"size={size}"] * (size is not None) +
                    [f"nr_inodes={inodes}"] * (inodes is not None))
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", where], check=True,
                   capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", where], check=True)


if os.geteuid() != 0:
    skip("cli_disk_full", "mounting a tmpfs needs root")

with tempfile.TemporaryDirectory() as tmp:
    mnt = os.path.join(tmp, "mnt")
    try:
        with tmpfs(mnt, size="1M", inodes=8):
            pass
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        skip("cli_disk_full", f"cannot mount a tmpfs here ({e})")

    rng = np.random.default_rng(7)
    src, src2 = os.path.join(tmp, "src"), os.path.join(tmp, "src2")
    save_hub_sharded(llama_state(rng), src, 60_000)
    save_hub_sharded(llama_state(rng), src2, 60_000)
    new_dir, old_dir = os.path.join(tmp, "new"), os.path.join(tmp, "old")
    check(convert(src, new_dir).returncode == 0 and convert(src2, old_dir).returncode == 0,
          "the reference conversions")
    new, old = files(new_dir), files(old_dir)
    pages = sum((len(data) + PAGE - 1) // PAGE for data in new.values())
    old_pages = sum((len(data) + PAGE - 1) // PAGE for data in old.values())

    def attempt(what, over_old, **limits):
        """One conversion into a fresh tmpfs; returns True when it failed (cleanly)."""
        with tmpfs(mnt, **limits):
            if over_old:
                for name, data in old.items():
                    with open(os.path.join(mnt, name), "wb") as fh:
                        fh.write(data)
            r = convert(src, mnt, *(["--overwrite"] if over_old else []))
            now = files(mnt)
        if r.returncode == 0:
            check(now == new, f"{what}: success leaves the whole new checkpoint")
            return False
        check(r.returncode == 1 and "No space left on device" in r.stderr,
              f"{what}: exit 1 with the system's reason ({r.returncode}: {r.stderr.strip()})")
        check(now == (old if over_old else {}),
              f"{what}: {'the old checkpoint untouched' if over_old else 'nothing'} left "
              f"({sorted(now)})")
        return True

    for over_old in (False, True):
        base = len(old) if over_old else 0
        label = "over an old checkpoint" if over_old else "into an empty tmpfs"
        # Inodes: the root, the checkpoint's files, and d9d's own (lock, temporaries, journal).
        failed = sum(attempt(f"{label}, {base + n} inodes", over_old, inodes=base + n)
                     for n in range(2, 2 + len(new) + 6))
        check(failed >= 4, f"{label}: runs out of inodes at several points ({failed})")
        # Bytes: from a quarter of the checkpoint to enough.
        base_pages = old_pages if over_old else 0
        sizes = sorted({pages // 4, pages // 2, *range(pages - 6, pages + 4)})
        failed = sum(attempt(f"{label}, {base_pages + p} pages", over_old,
                             size=(base_pages + p) * PAGE) for p in sizes)
        check(failed >= 4, f"{label}: runs out of space at several points ({failed})")
        print(f"ok: {label}: every run out of inodes or bytes failed cleanly")

finish("cli_disk_full")
