#!/usr/bin/env python3
"""Integrity (Note [hash lists] in io/hashes.cpp): `d9d convert` publishes d9d-hashes.json, and
`d9d verify CKPT --sha256` checks a checkpoint's files against it or against a hub snapshot's
blob names.

  - convert writes d9d-hashes.json beside its output: every shard's and the index's SHA-256,
    equal to Python hashlib's of the files; --no-hashes writes none, and a later convert over the
    directory takes an old list away with the old checkpoint;
  - verify --sha256 passes on the converted checkpoint; one byte changed in a shard is exit 1
    naming the file and both digests; a shard with no hash is exit 1 naming it; `d9d load
    --sha256` (ReadOptions::verify) checks before it loads;
  - a hub snapshot (shards linked to blobs named by their SHA-256) is checked without a list, and a
    corrupted blob is found;
  - verify A without B and without --sha256 is a usage error.

  python3 integrity.py D9D SPECS_DIR
"""
import hashlib
import json
import os
import tempfile

import numpy as np

from clitest import (INDEX, check, d9d, d9d_ok, expect_failure, finish, llama_state,
                     save_hub_sharded, spec)

LLAMA = spec("llama_hf_to_fused.json")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def flip_byte(path, at):
    with open(path, "r+b") as fh:
        fh.seek(at)
        b = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b[0] ^ 0x01]))


with tempfile.TemporaryDirectory() as tmp:
    rng = np.random.default_rng(7)
    src = os.path.join(tmp, "src")
    state = llama_state(rng, hidden=128, layers=2, heads=4, kv_heads=2, intermediate=320,
                        vocab=1000, random_bits=True)
    save_hub_sharded(state, src, 400_000)

    # ---- convert writes the list ----------------------------------------------------------------
    out = os.path.join(tmp, "out")
    d9d_ok("convert", src, out, "--spec", LLAMA, "--shard-size", "300KB", "--no-progress")
    with open(os.path.join(out, "d9d-hashes.json")) as fh:
        listed = json.load(fh)
    shards = sorted(n for n in os.listdir(out) if n.endswith(".safetensors"))
    check(len(shards) >= 2 and listed["algorithm"] == "sha256",
          f"a sharded output with a sha256 list ({shards}, {listed.get('algorithm')})")
    check(sorted(listed["files"]) == sorted(shards + [INDEX]),
          f"the list names every shard and the index ({sorted(listed['files'])})")
    check(all(listed["files"][n] == sha256(os.path.join(out, n)) for n in listed["files"]),
          "every digest is hashlib's of the file")

    r = d9d_ok("verify", out, "--sha256")
    check(f"{len(shards) + 1} files match their SHA-256 (from d9d-hashes.json)" in r.stdout,
          f"verify --sha256 passes, counting the files ({r.stdout.strip()})")
    r = d9d_ok("verify", src, out, "--spec", LLAMA)  # the hash list is no tensor: still equal
    check("bit-identical" in r.stdout, f"verify A B is unchanged by the list ({r.stdout.strip()})")

    # ---- a corrupted byte -----------------------------------------------------------------------
    victim = os.path.join(out, shards[1])
    flip_byte(victim, os.path.getsize(victim) - 10)
    expect_failure("one byte changed in a shard", ["verify", out, "--sha256"],
                   [victim, "has SHA-256 " + sha256(victim),
                    "expected " + listed["files"][shards[1]], "(from d9d-hashes.json)"])
    flip_byte(victim, os.path.getsize(victim) - 10)  # back
    d9d_ok("verify", out, "--sha256")

    r = d9d_ok("load", out, "--sha256", "--no-progress")
    check("every file checked against its SHA-256" in r.stdout, f"load --sha256 ({r.stdout})")
    flip_byte(victim, os.path.getsize(victim) - 10)
    expect_failure("load --sha256 of a changed shard", ["load", out, "--sha256", "--no-progress"],
                   [victim, "(from d9d-hashes.json)"])
    flip_byte(victim, os.path.getsize(victim) - 10)

    # ---- no list, an old list -------------------------------------------------------------------
    bare = os.path.join(tmp, "bare")
    d9d_ok("convert", src, bare, "--spec", LLAMA, "--no-hashes", "--no-progress")
    check(not os.path.exists(os.path.join(bare, "d9d-hashes.json")), "--no-hashes writes no list")
    expect_failure("no hash list", ["verify", bare, "--sha256"], ["no SHA-256 to check"])
    d9d_ok("convert", src, out, "--spec", LLAMA, "--no-hashes", "--overwrite", "--no-progress")
    check(not os.path.exists(os.path.join(out, "d9d-hashes.json")),
          "an old list goes with the old checkpoint it described")

    # ---- a hub snapshot -------------------------------------------------------------------------
    hub = os.path.join(tmp, "hub")
    snap = os.path.join(hub, "snapshots", "0123abcd")
    os.makedirs(os.path.join(hub, "blobs"))
    os.makedirs(snap)
    for name in os.listdir(src):
        path = os.path.join(src, name)
        # Large files are LFS blobs named by their SHA-256; the index a git blob (SHA-1 form).
        blob = sha256(path) if name.endswith(".safetensors") else hashlib.sha1(
            open(path, "rb").read()).hexdigest()
        os.replace(path, os.path.join(hub, "blobs", blob))
        os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snap, name))
    r = d9d_ok("verify", snap, "--sha256")
    check("(from the hub's blob name)" in r.stdout, f"a hub snapshot needs no list ({r.stdout})")
    linked = sorted(n for n in os.listdir(snap) if n.endswith(".safetensors"))[0]
    flip_byte(os.path.realpath(os.path.join(snap, linked)), 100)
    expect_failure("a corrupted hub blob", ["verify", snap, "--sha256"],
                   [linked, "(from the hub's blob name)"])

    # ---- usage ----------------------------------------------------------------------------------
    r = d9d("verify", out)
    check(r.returncode == 2 and "B is required (except with --sha256)" in r.stderr,
          f"verify A alone is a usage error ({r.returncode}: {r.stderr.strip()})")

finish("cli_integrity")
