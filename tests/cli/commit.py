#!/usr/bin/env python3
"""Writing a checkpoint (README: Reliability, Writing; Note [checkpoint commit] in
d9d/model_state/include/d9d/model_state/writer.hpp):

1. One writer: `convert` into a directory that another d9d process is writing is refused at once
   (exit 1, naming that process's pid), with or without --overwrite, and changes nothing; the
   first one finishes; a writer killed while it holds the lock leaves none behind.
2. --overwrite replaces only the old checkpoint (the files its index names, a model.safetensors,
   d9d-conversion.json): a user's model_backup.safetensors and config.json stay, and a file under
   a name the new checkpoint needs that the old index does not name is refused, nothing changed.
3. A SIGKILL at every step of the commit (the test hook D9D_TEST_COMMIT_FAULT=kill:K), over no
   checkpoint, over one with the same shard names, one with other names and a lone
   model.safetensors, of a sharded checkpoint and of one model.safetensors (no index, as
   transformers writes one shard; its commit point is another rename): the directory then reads, as transformers reads it, as the old checkpoint
   or the new one; a second kill, in the recovery, changes neither; the next run without
   --overwrite recovers (and succeeds, or refuses the checkpoint now complete there), the next
   with --overwrite writes the new one; no temporary and no lock file is left.

  python3 commit.py D9D SPECS_DIR
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time

import numpy as np
import safetensors.numpy as stnp

from clitest import (D9D, INDEX, SIDECAR, check, d9d, finish, llama_state, load_checkpoint,
                     save_hub_sharded, spec)

LLAMA = spec("llama_hf_to_fused.json")
FLAGS = ["--spec", LLAMA, "--no-progress", "--no-fsync"]
USER_FILES = {"config.json": b"{}", "model_backup.safetensors": b"the user's own"}


def convert(src, out, *extra, shard_size="100KB", env=None):
    return subprocess.run([D9D, "convert", src, out, *FLAGS, "--shard-size", shard_size, *extra],
                          capture_output=True, text=True, timeout=120, env=env)


def files(out):
    """Every file of a directory with its bytes."""
    return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))}


def lock_note(lock):
    try:
        with open(lock) as f:
            return f.read()
    except OSError:
        return ""


def hidden(out):
    """d9d's own files: temporaries, staged and set-aside files, the journal, the lock."""
    return sorted(n for n in os.listdir(out) if n.startswith("."))


def read_as_transformers(out):
    """The checkpoint in `out` as transformers finds it (model.safetensors first, then the index),
    tensor -> bytes; None when there is none or it cannot be read whole."""
    try:
        if os.path.exists(os.path.join(out, "model.safetensors")):
            tensors = stnp.load_file(os.path.join(out, "model.safetensors"))
        elif os.path.exists(os.path.join(out, INDEX)):
            tensors = load_checkpoint(out)
        else:
            return None
    except Exception:  # noqa: BLE001 - a torn checkpoint, whatever the reader says about it
        return "unreadable"
    return {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in tensors.items()}


def with_user_files(out):
    os.makedirs(out, exist_ok=True)
    for name, data in USER_FILES.items():
        with open(os.path.join(out, name), "wb") as fh:
            fh.write(data)


with tempfile.TemporaryDirectory() as tmp:
    def path(*p):
        return os.path.join(tmp, *p)

    rng = np.random.default_rng(15)
    src = path("src")
    save_hub_sharded(llama_state(rng), src, 60_000)
    src2 = path("src2")  # the same shapes, other values: the old checkpoints' source
    state2 = llama_state(rng)
    save_hub_sharded(state2, src2, 60_000)

    ref = path("ref")  # the new checkpoint, written without faults
    check(convert(src, ref).returncode == 0, "the reference conversion")
    new_files = files(ref)
    new = read_as_transformers(ref)
    shard_count = sum(n.endswith(".safetensors") for n in new_files)
    check(shard_count >= 3, f"the new checkpoint has several shards ({sorted(new_files)})")

    # ---- 1. one writer -------------------------------------------------------------------------
    big = path("big")
    save_hub_sharded(llama_state(rng, hidden=512, layers=6, heads=8, kv_heads=2, intermediate=1408,
                                 vocab=8000, random_bits=True), big, 20_000_000)
    out = path("locked")
    lock = os.path.join(out, ".d9d-lock")
    stopped = None
    for attempt in range(5):
        shutil.rmtree(out, ignore_errors=True)
        first = subprocess.Popen([D9D, "convert", big, out, "--spec", LLAMA, "--no-progress",
                                  "--threads", "1", "--memory-budget", "1MiB"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        # The lock file appears before its flock is taken; the holder's note (pid, host) is
        # written only once it is held, so wait for the note, not for the file.
        while first.poll() is None and time.monotonic() < deadline and \
                not lock_note(lock).startswith(f"{first.pid} "):
            time.sleep(0.0005)
        if first.poll() is None:
            first.send_signal(signal.SIGSTOP)
            stopped = first
            break
        print(f"note: attempt {attempt}: the first conversion ended before it was caught")
    if check(stopped is not None, "the first conversion was caught holding the lock"):
        before = files(out)
        for extra in ([], ["--overwrite"]):
            r = convert(src, out, *extra)
            check(r.returncode == 1 and f"is being written by another d9d process (pid "
                  f"{first.pid})" in r.stderr,
                  f"a second writer {extra} is refused, naming the first ({r.returncode}: "
                  f"{r.stderr.strip()})")
        check(files(out) == before, "the second writer changed nothing")
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=120)
        check(first.returncode == 0, f"the first writer finishes ({err.strip()})")
        v = d9d("verify", big, out, "--spec", LLAMA, "--no-progress")
        check(v.returncode == 0,
              f"the directory holds the first writer's checkpoint ({v.stdout.strip()[-2000:]} "
              f"{v.stderr.strip()[:3000]})")
        check(hidden(out) == [], f"no lock file or temporary left ({hidden(out)})")
        print(f"ok: a second writer was refused while pid {first.pid} held {out}")
        # Killed while holding the lock: the kernel drops it, and the next writer goes ahead.
        second = subprocess.Popen([D9D, "convert", big, out, "--spec", LLAMA, "--no-progress",
                                   "--overwrite", "--threads", "1", "--memory-budget", "1MiB"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while second.poll() is None and not any(n.startswith(".d9d-shard-") for n in hidden(out)):
            time.sleep(0.0005)
        second.kill()
        second.wait()
        check(second.returncode == -signal.SIGKILL, "the second writer was killed mid-write")
        r = convert(src, out, "--overwrite")
        check(r.returncode == 0, f"after a writer was killed, the next one writes ({r.stderr.strip()})")
        check(files(out) == new_files, "and its checkpoint is complete")

    # ---- 2. --overwrite replaces the old checkpoint and nothing else -------------------------
    out = path("keep")
    with_user_files(out)
    check(convert(src2, out, "--overwrite", shard_size="1GB").returncode == 0, "one shard")
    check(sorted(files(out)) == sorted([*USER_FILES, SIDECAR, "d9d-hashes.json",
                                        "model.safetensors"]),
          f"a conversion of one shard beside the user's files: model.safetensors, no index, as "
          f"transformers' save_pretrained writes ({sorted(files(out))})")
    stray = f"model-00001-of-{shard_count:05d}.safetensors"
    with open(os.path.join(out, stray), "wb") as fh:
        fh.write(b"not d9d's")
    before = files(out)
    r = convert(src, out, "--overwrite")
    check(r.returncode == 1 and stray in r.stderr and "not part of the checkpoint" in r.stderr,
          f"a file the new checkpoint would replace, not in the old index: refused "
          f"({r.returncode}: {r.stderr.strip()})")
    check(files(out) == before, "nothing changed")
    os.remove(os.path.join(out, stray))
    r = convert(src, out, "--overwrite")
    check(r.returncode == 0, f"--overwrite ({r.stderr.strip()})")
    check(files(out) == {**new_files, **USER_FILES},
          f"--overwrite replaced the old checkpoint, kept the user's files ({sorted(files(out))})")

    # ---- 3. a kill at every step of the commit ---------------------------------------------------
    templates = {}
    t = templates["no checkpoint"] = path("old-none")
    os.makedirs(t)
    with open(os.path.join(t, "config.json"), "wb") as fh:  # not a checkpoint: no --overwrite
        fh.write(USER_FILES["config.json"])
    t = templates["the same shard names"] = path("old-same")
    with_user_files(t)
    check(convert(src2, t, "--overwrite").returncode == 0, "an old checkpoint")
    t = templates["other shard names"] = path("old-other")
    with_user_files(t)
    check(convert(src2, t, "--overwrite", shard_size="250KB").returncode == 0, "an old checkpoint")
    other = [n for n in os.listdir(t) if n.endswith(".safetensors") and n not in USER_FILES]
    check(1 < len(other) != shard_count, f"other shard names than the new checkpoint's ({other})")
    t = templates["a lone model.safetensors"] = path("old-single")
    with_user_files(t)
    stnp.save_file(state2, os.path.join(t, "model.safetensors"), metadata={"format": "pt"})
    check(sorted(files(templates["the same shard names"])) == sorted({**new_files, **USER_FILES}),
          "an old checkpoint with the new one's names")

    # The new checkpoint of one file (model.safetensors, no index: its own commit point).
    one = path("ref-one")
    check(convert(src, one, shard_size="1GB").returncode == 0, "the reference conversion, one file")
    one_files = files(one)
    check(sorted(one_files) == ["d9d-conversion.json", "d9d-hashes.json", "model.safetensors"],
          f"one file ({sorted(one_files)})")
    check(read_as_transformers(one) == new, "the same tensors as the sharded one")

    runs = 0
    t0 = time.monotonic()

    def kill_everywhere(what, template, shard_size, new_files):
        """A kill at each step of one commit into a copy of `template` (see the module's doc)."""
        global runs
        old_files = files(template)
        old = read_as_transformers(template)
        overwrite = [] if what.startswith("no checkpoint") else ["--overwrite"]
        kept = {n: data for n, data in old_files.items() if n in USER_FILES}
        seen = {"old": 0, "new": 0}
        for k in range(1, 200):
            out = path("kill", f"{what}-{k}")
            shutil.copytree(template, out)
            r = convert(src, out, *overwrite, shard_size=shard_size,
                        env=dict(os.environ, D9D_TEST_COMMIT_FAULT=f"kill:{k}"))
            runs += 1
            if r.returncode == 0:  # past the last step: every step was tried
                check(files(out) == {**new_files, **kept}, f"{what}: kill:{k}: never reached")
                break
            if not check(r.returncode == -signal.SIGKILL,
                         f"{what}: kill:{k}: killed ({r.returncode}: {r.stderr.strip()})"):
                break
            now = read_as_transformers(out)
            state = "old" if now == old else "new" if now == new else "neither"
            check(state != "neither", f"{what}: kill:{k}: the old checkpoint or the new one "
                                      f"({sorted(os.listdir(out))})")
            seen[state] = seen.get(state, 0) + 1
            sidecar = os.path.join(out, SIDECAR)
            expected_sidecar = (new_files if state == "new" else old_files).get(SIDECAR)
            check(not os.path.exists(sidecar) or open(sidecar, "rb").read() == expected_sidecar,
                  f"{what}: kill:{k}: no conversion record, or the {state} checkpoint's")
            # A second kill, in the recovery (or the first step of the run): nothing changes.
            r = convert(src, out, *overwrite, shard_size=shard_size,
                        env=dict(os.environ, D9D_TEST_COMMIT_FAULT="kill:1"))
            runs += 1
            check(r.returncode == -signal.SIGKILL and read_as_transformers(out) == now,
                  f"{what}: kill:{k} then a kill in the recovery: still the {state} checkpoint")
            # The next run without --overwrite recovers; it writes only where there was nothing.
            r = convert(src, out, shard_size=shard_size)
            runs += 1
            if overwrite == [] and state == "old":
                check(r.returncode == 0, f"{what}: kill:{k}: the rerun succeeds ({r.stderr.strip()})")
                state = "new"
            else:
                check(r.returncode == 1 and "already holds a checkpoint" in r.stderr,
                      f"{what}: kill:{k}: the rerun refuses the checkpoint there "
                      f"({r.returncode}: {r.stderr.strip()})")
            whole = {**new_files, **kept} if state == "new" else old_files
            check(files(out) == whole, f"{what}: kill:{k}: the {state} checkpoint exactly, "
                                       f"recovered ({sorted(os.listdir(out))})")
            check(hidden(out) == [], f"{what}: kill:{k}: nothing of d9d's left ({hidden(out)})")
            # With --overwrite: the new checkpoint, whatever happened before.
            r = convert(src, out, "--overwrite", shard_size=shard_size)
            runs += 1
            check(r.returncode == 0 and files(out) == {**new_files, **kept},
                  f"{what}: kill:{k}: --overwrite then writes the new checkpoint "
                  f"({r.stderr.strip()}; {sorted(os.listdir(out))})")
            shutil.rmtree(out)
        check(seen["old"] >= 2 and seen["new"] >= 1,
              f"{what}: kills landed before and after the commit point ({seen})")
        print(f"ok: {what}: {sum(seen.values())} kill points: {seen['old']} left the old "
              f"checkpoint, {seen['new']} the new one; every one recovered")

    for what, template in templates.items():
        kill_everywhere(what, template, "100KB", new_files)
    for what in ("no checkpoint", "the same shard names", "a lone model.safetensors"):
        kill_everywhere(f"{what}, new model.safetensors", templates[what], "1GB", one_files)
    print(f"{runs} conversions in {time.monotonic() - t0:.1f} s")

finish("cli_commit")
