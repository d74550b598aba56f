#!/usr/bin/env python3
"""`mpirun -np N d9d convert`: one checkpoint, byte for byte the single-process one (every file,
the index and the conversion record, forward and --reverse); errors agreed on by every rank (one
message, exit 1, nothing partial); only `convert` runs under mpirun; a rank killed mid-conversion
ends the job non-zero within a bounded time, with no index; a second writer (one process or a
job) beside a running job is refused, naming its rank 0; rank 0 killed at steps of its commit
leaves the old checkpoint or the new one, and the next job writes the new one; and a rank that
stops coming to collectives ends the job after D9D_DIST_TIMEOUT.

  python3 dist_cli.py D9D SPECS_DIR DIST_TOOL MPIRUN
"""
import filecmp
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cli"))
import numpy as np  # noqa: E402

from clitest import (D9D, check, final_files, finish, is_temporary, llama_state,  # noqa: E402
                     save_hub_sharded, spec)

DIST_TOOL = os.path.abspath(sys.argv[3])
MPIRUN = sys.argv[4]
LLAMA = spec("llama_hf_to_fused.json")
MPI_FLAGS = ["--oversubscribe", "--bind-to", "none"]


def mpirun(np_, *args, timeout=300, popen=False):
    cmd = [MPIRUN, *MPI_FLAGS, "-np", str(np_), *map(str, args)]
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def single(*args):
    return subprocess.run([D9D, *map(str, args)], capture_output=True, text=True, timeout=300)


def same_checkpoint(a, b, what):
    names_a, names_b = sorted(os.listdir(a)), sorted(os.listdir(b))
    if not check(names_a == names_b, f"{what}: the same files ({names_a} vs {names_b})"):
        return
    differ = [n for n in names_a if not filecmp.cmp(os.path.join(a, n), os.path.join(b, n),
                                                    shallow=False)]
    check(not differ, f"{what}: every file byte for byte ({differ} differ)")
    print(f"ok: {what}: {len(names_a)} files identical")


def rank_pids(mpirun_pid):
    """The d9d processes mpirun started, by their rank."""
    pids = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            if ppid != mpirun_pid:
                continue
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
            pids[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(pid)
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return pids


with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "src")
    rng = np.random.default_rng(3)
    state = llama_state(rng, hidden=256, layers=6, heads=8, kv_heads=2, intermediate=704,
                        vocab=5000, random_bits=True)
    save_hub_sharded(state, src, max_shard_size=3_000_000)

    # Byte for byte the single-process checkpoint, for several shard sizes and rank counts.
    for shard_size in ("3MB", "7MB", "1GB"):
        one = os.path.join(tmp, f"one-{shard_size}")
        r = single("convert", src, one, "--spec", LLAMA, "--shard-size", shard_size, "--no-progress")
        check(r.returncode == 0, f"single-process convert ({r.stderr.strip()})")
        for n in (2, 4):
            many = os.path.join(tmp, f"np{n}-{shard_size}")
            r = mpirun(n, D9D, "convert", src, many, "--spec", LLAMA, "--shard-size", shard_size)
            if not check(r.returncode == 0, f"mpirun -np {n} convert ({r.stderr.strip()})"):
                continue
            check(r.stdout.count("d9d convert:") == 1 and f"by {n} ranks" in r.stdout,
                  f"-np {n}: one summary line, from rank 0 ({r.stdout.strip()})")
            same_checkpoint(one, many, f"-np {n} --shard-size {shard_size}")
    # --reverse through the conversion record, on 3 ranks.
    back_one = os.path.join(tmp, "back-one")
    back_many = os.path.join(tmp, "back-np3")
    r = single("convert", os.path.join(tmp, "one-7MB"), back_one, "--reverse", "--shard-size",
               "3MB", "--no-progress")
    check(r.returncode == 0, f"single-process --reverse ({r.stderr.strip()})")
    r = mpirun(3, D9D, "convert", os.path.join(tmp, "np4-7MB"), back_many, "--reverse",
               "--shard-size", "3MB")
    check(r.returncode == 0, f"mpirun -np 3 --reverse ({r.stderr.strip()})")
    same_checkpoint(back_one, back_many, "-np 3 --reverse")

    # An error every rank meets: one message (rank 0's), exit 1, the old checkpoint untouched.
    many = os.path.join(tmp, "np2-7MB")
    before = {n: os.path.getmtime(os.path.join(many, n)) for n in os.listdir(many)}
    r = mpirun(2, D9D, "convert", src, many, "--spec", LLAMA, "--shard-size", "7MB")
    check(r.returncode == 1, f"an existing checkpoint: exit 1 (got {r.returncode})")
    check(r.stderr.count("d9d: error:") == 1 and "already holds a checkpoint" in r.stderr,
          f"one error message naming the problem ({r.stderr.strip()})")
    check("pass --overwrite" in r.stderr and "WriteOptions" not in r.stderr,
          f"in the command line's words, as one process says it ({r.stderr.strip()})")
    check({n: os.path.getmtime(os.path.join(many, n)) for n in os.listdir(many)} == before,
          "the existing checkpoint is untouched")
    # Tensors larger than a shard each get one of their own (as transformers' splitter does),
    # the same on every rank count.
    one, two = os.path.join(tmp, "np1-100KB"), os.path.join(tmp, "np2-100KB")
    r1 = subprocess.run([D9D, "convert", src, one, "--spec", LLAMA, "--shard-size", "100KB",
                         "--no-progress"], capture_output=True, text=True, timeout=300)
    r = mpirun(2, D9D, "convert", src, two, "--spec", LLAMA, "--shard-size", "100KB")
    check(r1.returncode == 0 and r.returncode == 0 and "a shard of its own" in r.stderr,
          f"tensors larger than a shard: converted, and said ({r1.stderr.strip()} {r.stderr.strip()})")
    if r1.returncode == 0 and r.returncode == 0:
        same_checkpoint(one, two, "-np 2, tensors larger than a shard")
    r = mpirun(2, D9D, "inspect", src)
    check(r.returncode == 2 and "only `d9d convert` runs under mpirun" in r.stderr,
          f"other commands refuse to run on several ranks ({r.returncode}: {r.stderr.strip()})")

    # A rank killed mid-conversion: the job ends non-zero within a bounded time, no index. A
    # larger source, read with a small budget, so that the kill lands while the ranks write.
    big = os.path.join(tmp, "big")
    state = llama_state(rng, hidden=1024, layers=8, heads=16, kv_heads=4, intermediate=2816,
                        vocab=32000, random_bits=True)
    save_hub_sharded(state, big, max_shard_size=100_000_000)
    del state
    out = os.path.join(tmp, "killed")
    landed = 0
    for attempt in range(5):
        proc = mpirun(4, D9D, "convert", big, out, "--spec", LLAMA, "--shard-size", "80MB",
                      "--threads", "1", "--memory-budget", "4MiB", popen=True)
        deadline = time.monotonic() + 60
        victim = None
        while proc.poll() is None and time.monotonic() < deadline:
            names = os.listdir(out) if os.path.isdir(out) else []
            if any(n.startswith(".d9d-shard-") for n in names):  # rank 0 made the shared shards
                ranks = rank_pids(proc.pid)
                victim = ranks.get(2)
                if victim is not None:
                    break
            time.sleep(0.001)
        if victim is None or proc.poll() is not None:
            proc.kill()
            proc.communicate()
            print(f"note: attempt {attempt}: the conversion ended before the kill")
            subprocess.run(["rm", "-rf", out])
            continue
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        took = time.monotonic() - t0
        landed += 1
        check(proc.returncode != 0, f"a killed rank: mpirun exits non-zero ({proc.returncode})")
        check(took < 30, f"a killed rank: the job ends within 30 s ({took:.1f} s)")
        check(final_files(out) == [], f"a killed rank: no index, nothing under a final name "
                                      f"({final_files(out)})")
        print(f"ok: rank 2 killed; the job ended in {took:.1f} s with exit {proc.returncode}")
        break
    check(landed == 1, "the kill landed mid-conversion")
    # mpirun may return while its ranks are still being torn down; the rerun removes the
    # temporaries of processes that are gone.
    deadline = time.monotonic() + 30
    while landed and time.monotonic() < deadline and any(
            os.path.exists(f"/proc/{pid}") for pid in ranks.values()):
        time.sleep(0.05)
    # The rerun sweeps the dead job's temporaries and succeeds.
    r = mpirun(2, D9D, "convert", big, out, "--spec", LLAMA, "--shard-size", "80MB")
    check(r.returncode == 0, f"the rerun after a kill succeeds ({r.stderr.strip()})")
    left = [n for n in os.listdir(out) if is_temporary(n)]
    check(left == [], f"no temporaries after the rerun ({left})")

    # One writer (Note [checkpoint commit]): while a 4-rank job writes `out` (its ranks stopped
    # with SIGSTOP), a single-process conversion and a 2-rank one into `out` are refused, naming
    # rank 0's pid, and change nothing; the job then finishes.
    job = mpirun(4, D9D, "convert", big, out, "--spec", LLAMA, "--shard-size", "80MB", "--overwrite",
                 "--threads", "1", "--memory-budget", "4MiB", popen=True)
    ranks = {}
    while job.poll() is None and not (os.path.isdir(out) and
                                      any(n.startswith(".d9d-shard-") for n in os.listdir(out))):
        time.sleep(0.001)
    ranks = rank_pids(job.pid)
    if check(job.poll() is None and len(ranks) == 4, "the 4-rank job was caught writing"):
        for pid in ranks.values():
            os.kill(pid, signal.SIGSTOP)
        before = sorted(os.listdir(out))
        r = single("convert", src, out, "--spec", LLAMA, "--overwrite", "--no-progress")
        check(r.returncode == 1 and f"another d9d process (pid {ranks[0]})" in r.stderr,
              f"a second writer beside a running job is refused ({r.returncode}: {r.stderr.strip()})")
        r = mpirun(2, D9D, "convert", src, out, "--spec", LLAMA, "--overwrite")
        check(r.returncode == 1 and r.stderr.count("d9d: error:") == 1 and
              "is being written by another d9d process" in r.stderr,
              f"a second job is refused with one message ({r.returncode}: {r.stderr.strip()})")
        check(sorted(os.listdir(out)) == before, "the refused writers changed nothing")
        for pid in ranks.values():
            os.kill(pid, signal.SIGCONT)
        print(f"ok: writers beside a running job were refused, naming its rank 0 (pid {ranks[0]})")
    _, err = job.communicate(timeout=300)
    check(job.returncode == 0, f"the first job finishes ({err.strip()[-300:]})")
    check(single("verify", big, out, "--spec", LLAMA, "--no-progress").returncode == 0,
          "and its checkpoint is the one in the directory")

    # Rank 0 killed at steps of its commit (the test hook D9D_TEST_COMMIT_FAULT=kill:K), over an
    # old checkpoint with the same shard names: the old one or the new one is there, and the next
    # job writes the new one, byte for byte the single-process one.
    old_src = os.path.join(tmp, "old-src")
    save_hub_sharded(llama_state(np.random.default_rng(4), hidden=256, layers=6, heads=8,
                                 kv_heads=2, intermediate=704, vocab=5000, random_bits=True),
                     old_src, max_shard_size=3_000_000)
    one = os.path.join(tmp, "one-3MB")
    states = set()
    for k in range(1, 100, 4):
        out = os.path.join(tmp, f"commit-kill-{k}")
        r = mpirun(2, D9D, "convert", old_src, out, "--spec", LLAMA, "--shard-size", "3MB")
        check(r.returncode == 0, f"the old checkpoint ({r.stderr.strip()})")
        env = dict(os.environ, D9D_TEST_COMMIT_FAULT=f"kill:{k}")
        r = subprocess.run([MPIRUN, *MPI_FLAGS, "-np", "2", D9D, "convert", src, out, "--spec",
                            LLAMA, "--shard-size", "3MB", "--overwrite"], capture_output=True,
                           text=True, timeout=300, env=env)
        if r.returncode == 0:
            same_checkpoint(one, out, f"kill:{k} came after the last step")
            break
        is_old = single("verify", old_src, out, "--spec", LLAMA, "--no-progress").returncode == 0
        is_new = single("verify", src, out, "--spec", LLAMA, "--no-progress").returncode == 0
        check(is_old != is_new,
              f"rank 0 killed at commit step {k}: the old checkpoint or the new one "
              f"({sorted(os.listdir(out))})")
        states.add("old" if is_old else "new")
        r = mpirun(2, D9D, "convert", src, out, "--spec", LLAMA, "--shard-size", "3MB",
                   "--overwrite")
        check(r.returncode == 0, f"kill:{k}: the next job succeeds ({r.stderr.strip()})")
        same_checkpoint(one, out, f"kill:{k}: the next job")
    check(states == {"old", "new"}, f"kills landed before and after the commit point ({states})")

    # A rank that stops coming to collectives (alive, not dying): the watchdog ends the job.
    env = dict(os.environ, D9D_DIST_TIMEOUT="2")
    t0 = time.monotonic()
    r = subprocess.run([MPIRUN, *MPI_FLAGS, "-np", "3", DIST_TOOL, "hang"], capture_output=True,
                       text=True, timeout=120, env=env)
    took = time.monotonic() - t0
    check(r.returncode != 0, f"a hung rank: the job exits non-zero ({r.returncode})")
    check("barrier did not complete within 2 s" in r.stderr,
          f"the message names the collective and the limit ({r.stderr.strip()[:300]})")
    check(took < 60, f"a hung rank: the job ends in bounded time ({took:.1f} s)")
    print(f"ok: a hung rank ended the job in {took:.1f} s")

finish("dist_cli")
