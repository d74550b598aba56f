#!/usr/bin/env python3
"""What d9d guarantees when it reads (README, Reliability, Reading): input that changes or lies
under it is an error naming the file, never a crash, a hang or a leak.

  - a shard cut short while `convert` (through copies, and through views) or `verify` reads it:
    exit 1 naming the file, never SIGBUS, nothing partial in the destination;
  - a FIFO in place of a shard, the index or the spec: refused at once, not waited on;
  - JSON nested 100,000 deep in a spec, a rule or the conversion record: exit 1, a bounded
    message, never a stack overflow;
  - a shard that is a text file: the error does not echo its first 8 bytes;
  - shards and index that disagree: a tensor in two shards is an error naming both files, one the
    index does not list is a warning naming it (an error under "unmatched": "error").

  python3 reading.py D9D SPECS_DIR
"""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import numpy as np
import safetensors.numpy as stnp

from clitest import (D9D, INDEX, SIDECAR, check, d9d, d9d_ok, expect_failure, finish,
                     is_temporary, llama_state, nothing_partial, save_hub_sharded, spec)

LLAMA = spec("llama_hf_to_fused.json")
rng = np.random.default_rng(15)


def shards_of(ck):
    return sorted(n for n in os.listdir(ck) if n.endswith(".safetensors"))


def run_and_cut(args, victim, started, what):
    """Runs d9d with `args`, cuts `victim` to 1 MiB as soon as started() holds, and returns the
    CompletedProcess-like (returncode, stderr), or None when the run ended before the cut."""
    proc = subprocess.Popen([D9D, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and not started() and time.monotonic() < deadline:
        time.sleep(0.0005)
    if proc.poll() is not None:
        proc.communicate()
        return None
    os.truncate(victim, 1 << 20)
    _, err = proc.communicate()
    return proc.returncode, err


def check_cut(result, victim, what, out=None):
    code, err = result
    check(code != -signal.SIGBUS and code >= 0, f"{what}: no signal (exit {code}; {err.strip()})")
    check(code == 1 and "d9d: error: " in err and victim in err,
          f"{what}: exit 1 naming {victim} (exit {code}; {err.strip()})")
    if out is not None:
        nothing_partial(out, what)
    print(f"ok: {what}: {err.strip().splitlines()[-1] if err.strip() else ''}")


with tempfile.TemporaryDirectory() as tmp:
    def path(*p):
        return os.path.join(tmp, *p)

    # ---- a shard cut short while it is read --------------------------------------------------
    # About 300 MB in 64 MB shards, read slowly (one thread, a small budget): a cut made as soon
    # as the run has started lands in the middle of it.
    src = path("src")
    save_hub_sharded(llama_state(rng, hidden=1024, layers=8, heads=16, kv_heads=4,
                                 intermediate=2816, vocab=32000, random_bits=True), src, 64_000_000)
    keep_all = path("keep_all.json")
    with open(keep_all, "w") as fh:
        json.dump({"d9d_mapper_spec": 1, "rules": []}, fh)  # every tensor passed on as a view
    slow = ["--threads", "1", "--memory-budget", "16MiB", "--no-progress"]
    for spec_file, how in [(LLAMA, "through copies (cat)"), (keep_all, "through views")]:
        what = f"convert with a shard cut short {how}"
        for attempt in range(5):
            ck = path("cut")
            shutil.rmtree(ck, ignore_errors=True)
            shutil.copytree(src, ck)
            victim = os.path.join(ck, shards_of(ck)[-1])  # read last
            out = path("cut_out")
            shutil.rmtree(out, ignore_errors=True)
            started = lambda: os.path.isdir(out) and any(is_temporary(n) for n in os.listdir(out))
            r = run_and_cut(["convert", ck, out, "--spec", spec_file, *slow], victim, started, what)
            if r is not None:
                check_cut(r, victim, what, out=out)
                break
            print(f"note: {what}: attempt {attempt + 1} ended before the cut")
        else:
            check(False, f"{what}: a cut landed mid-run in 5 attempts")
    what = "verify with a shard of A cut short"
    for delay in (0.3, 0.1, 0.03, 0.01, 0.0):
        a = path("cut")
        shutil.rmtree(a, ignore_errors=True)
        shutil.copytree(src, a)
        victim = os.path.join(a, shards_of(a)[-1])
        t0 = time.monotonic()
        r = run_and_cut(["verify", a, src, *slow], victim, lambda: time.monotonic() - t0 > delay,
                        what)
        if r is not None and r[0] == 0 and delay > 0:
            # Still running at the cut, but past its last read (exit 0 only when every byte
            # compared equal): nothing was cut from under it. Cut sooner.
            print(f"note: {what}: the cut after {delay} s came after verify's last read")
            continue
        if r is not None:
            check_cut(r, victim, what)
            break
    else:
        check(False, f"{what}: a cut landed mid-run")

    # A small checkpoint for the cases below.
    good = path("good")
    save_hub_sharded(llama_state(rng), good, 60_000)
    shards = shards_of(good)
    check(len(shards) >= 3, f"the test checkpoint has several shards ({shards})")

    # ---- FIFOs: refused at once (a timeout fails the check instead of hanging the suite) -----
    def refused(what, args, needle):
        try:
            r = d9d(*args, timeout=20)
        except subprocess.TimeoutExpired:
            return check(False, f"{what}: refused at once (it waited on the FIFO)")
        check(r.returncode == 1 and "not a regular file (a FIFO)" in r.stderr and needle in r.stderr,
              f"{what}: exit 1, 'not a regular file (a FIFO)' naming {needle} "
              f"(exit {r.returncode}; {r.stderr.strip()})")

    ck = path("fifo_shard")
    shutil.copytree(good, ck)
    os.remove(os.path.join(ck, shards[1]))
    os.mkfifo(os.path.join(ck, shards[1]))
    refused("a FIFO shard (inspect)", ["inspect", ck], shards[1])
    refused("a FIFO shard (convert)", ["convert", ck, path("f_out"), "--spec", LLAMA], shards[1])
    nothing_partial(path("f_out"), "a FIFO shard (convert)")
    ck = path("fifo_index")
    shutil.copytree(good, ck)
    os.remove(os.path.join(ck, INDEX))
    os.mkfifo(os.path.join(ck, INDEX))
    refused("a FIFO index (convert)", ["convert", ck, path("f_out"), "--spec", LLAMA], INDEX)
    os.mkfifo(path("spec.fifo"))
    refused("a FIFO spec (plan)", ["plan", good, "--spec", path("spec.fifo")], "spec.fifo")

    # ---- JSON nested 100,000 deep -------------------------------------------------------------
    deep = "[" * 100_000 + "]" * 100_000

    def bounded(what, args, needle):
        r = d9d(*args)
        check(r.returncode == 1, f"{what}: exit 1, not a crash (exit {r.returncode})")
        check(needle in r.stderr and "nested deeper than 64" in r.stderr,
              f"{what}: the message names {needle} and the depth ({r.stderr[:300]!r})")
        check(len(r.stderr) < 2000, f"{what}: a bounded message ({len(r.stderr)} characters)")

    for name, text in [("deep_description.json",
                        '{"d9d_mapper_spec": 1, "description": ' + deep + ', "rules": []}'),
                       ("deep_rule.json", '{"d9d_mapper_spec": 1, "rules": [' + deep + ']}')]:
        with open(path(name), "w") as fh:
            fh.write(text)
        bounded(f"a spec nested 100,000 deep ({name})", ["plan", good, "--spec", path(name)], name)
    fused = path("fused")
    d9d_ok("convert", good, fused, "--spec", LLAMA, "--no-progress")
    with open(os.path.join(fused, SIDECAR), "w") as fh:
        fh.write('{"d9d_conversion": ' + deep + '}')
    bounded("a conversion record nested 100,000 deep (convert --reverse)",
            ["convert", fused, path("r_out"), "--reverse"], SIDECAR)
    nothing_partial(path("r_out"), "a deep conversion record")
    bounded("a conversion record nested 100,000 deep (plan --reverse)",
            ["plan", fused, "--reverse"], SIDECAR)
    with open(os.path.join(fused, SIDECAR), "w") as fh:
        json.dump({"d9d_conversion": "x" * 100_000}, fh)
    r = expect_failure("a conversion record with a long wrong value",
                       ["convert", fused, path("r_out"), "--reverse"], [SIDECAR, "unknown version"])
    check(len(r.stderr) < 1000, f"the value is shown cut short ({len(r.stderr)} characters)")

    # ---- a shard that is a text file: its first 8 bytes are not echoed --------------------------
    secret = path("secret.txt")
    with open(secret, "w") as fh:
        fh.write("s3cr3t-k3y-0123456789abcdef\n")
    leaked = str(int.from_bytes(b"s3cr3t-k", "little"))
    ck = path("leak")
    shutil.copytree(good, ck)
    os.remove(os.path.join(ck, shards[0]))
    os.symlink(secret, os.path.join(ck, shards[0]))  # followed: the hub's cache is symlinks
    r = expect_failure("a shard that is a text file", ["inspect", ck],
                       [shards[0], "not a plausible header length", "rule 2"])
    check(leaked not in r.stderr and "s3cr3t" not in r.stderr,
          f"the file's first 8 bytes are not in the message ({r.stderr.strip()})")

    # ---- shards and index that disagree --------------------------------------------------------
    index = json.load(open(os.path.join(good, INDEX)))
    dropped = "model.layers.1.mlp.down_proj.weight"
    holder = index["weight_map"][dropped]
    ck = path("unlisted")
    shutil.copytree(good, ck)
    del index["weight_map"][dropped]
    json.dump(index, open(os.path.join(ck, INDEX), "w"))
    keep_spec = path("keep_everything.json")
    with open(keep_spec, "w") as fh:
        json.dump({"d9d_mapper_spec": 1, "unmatched": "keep", "rules": []}, fh)
    for what, args in [("inspect", ["inspect", ck]),
                       ("convert, unmatched keep", ["convert", ck, path("u_out"), "--spec",
                                                    keep_spec, "--no-progress"]),
                       ("verify", ["verify", ck, ck, "--no-progress"])]:
        r = d9d(*args)
        check(r.returncode == 0 and "d9d: warning:" in r.stderr and dropped in r.stderr and
              holder in r.stderr and "not in its index" in r.stderr,
              f"a tensor the index does not list ({what}): exit 0, a warning naming it and its "
              f"shard (exit {r.returncode}; {r.stderr.strip()})")
    check(dropped not in d9d_ok("inspect", path("u_out"), "--json").stdout,
          "the unlisted tensor is left out of the conversion")
    expect_failure("a tensor the index does not list, under \"unmatched\": \"error\"",
                   ["convert", ck, path("e_out"), "--spec", LLAMA],
                   [dropped, holder, '"unmatched": "error"'], out=path("e_out"))
    ck = path("twice")
    shutil.copytree(good, ck)
    other = next(s for s in shards if s != holder)
    tensors = stnp.load_file(os.path.join(ck, other))
    tensors[dropped] = stnp.load_file(os.path.join(ck, holder))[dropped]
    stnp.save_file(tensors, os.path.join(ck, other), metadata={"format": "pt"})
    for what, args in [("inspect", ["inspect", ck]),
                       ("convert", ["convert", ck, path("t_out"), "--spec", LLAMA])]:
        expect_failure(f"a tensor in two shards ({what})", args,
                       [dropped, "in two shards", holder, other], out=path("t_out"))

finish("cli_reading")
