#!/usr/bin/env python3
"""Bad input to `d9d`: each case is a clear error (exit 1, 'd9d: error:', a message that names the
file or key), and the destination holds nothing partial afterwards. Usage errors exit 2.

  python3 bad_input.py D9D SPECS_DIR
"""
import json
import os
import shutil
import stat
import tempfile
import time
from fractions import Fraction

import numpy as np
import safetensors.numpy as stnp

from clitest import (BF16, INDEX, SIDECAR, check, d9d, d9d_ok, expect_failure, finish,
                     llama_state, nothing_partial, save_hub_sharded, spec)

rng = np.random.default_rng(5)
LLAMA = spec("llama_hf_to_fused.json")

with tempfile.TemporaryDirectory() as tmp:
    def path(*p):
        return os.path.join(tmp, *p)

    def fresh(name, state=None, shard=60_000):
        d = path(name)
        save_hub_sharded(state if state is not None else llama_state(rng), d, shard)
        return d

    good = fresh("good")
    with open(os.path.join(good, INDEX)) as fh:
        index = json.load(fh)
    shards = sorted(set(index["weight_map"].values()))
    check(len(shards) >= 3, f"the test checkpoint has several shards ({shards})")

    # ---- usage errors: exit 2 ---------------------------------------------------------------
    for what, args in [("no command", []), ("unknown command", ["frobnicate"]),
                       ("convert without OUT", ["convert", good]),
                       ("convert without --spec", ["convert", good, path("u1")]),
                       ("a size with an unknown unit", ["convert", good, path("u2"), "--spec", LLAMA,
                                                        "--shard-size", "5XB"]),
                       ("an ambiguous size", ["convert", good, path("u3"), "--spec", LLAMA,
                                              "--shard-size", "5G"]),
                       ("a bad device", ["convert", good, path("u4"), "--spec", LLAMA,
                                         "--device", "tpu:0"]),
                       ("negative threads", ["convert", good, path("u5"), "--spec", LLAMA,
                                             "--threads", "-2"]),
                       ("plan without --spec", ["plan", good]),
                       ("verify with one checkpoint", ["verify", good])]:
        r = d9d(*args)
        check(r.returncode == 2, f"usage: {what}: exit 2 (got {r.returncode}: {r.stderr.strip()})")
    for u in ("u1", "u2", "u3", "u4", "u5"):
        check(not os.path.exists(path(u)), f"usage error left no {u}")
    # Flags out of range: exit 2, in the CLI's words (the flag named), never an abort.
    nines, huge = "9" * 400, "1" + "0" * 400 + "MiB"
    for what, args, flag in [
            ("a shard size of 400 nines", ["convert", good, path("u6"), "--spec", LLAMA,
                                           "--shard-size", nines], "--shard-size"),
            ("a memory budget past 2^63", ["convert", good, path("u6"), "--spec", LLAMA,
                                           "--memory-budget", huge], "--memory-budget"),
            ("a shard size of 2^63 bytes", ["plan", good, "--spec", LLAMA, "--shard-size",
                                            "8388608TiB"], "--shard-size"),
            ("verify's memory budget", ["verify", good, good, "--memory-budget", huge],
             "--memory-budget"),
            ("the demo's shard size", ["demo", "--shard-size", nines], "--shard-size"),
            ("100000 threads", ["convert", good, path("u6"), "--spec", LLAMA, "--threads",
                                "100000"], "--threads"),
            ("verify with 1025 threads", ["verify", good, good, "--threads", "1025"], "--threads"),
            ("the demo with 100000 threads", ["demo", "--threads", "100000"], "--threads"),
            ("--max-shown past an int", ["verify", good, good, "--max-shown", "1" + "0" * 20],
             "--max-shown"),
            ("a negative --max-shown", ["verify", good, good, "--max-shown", "-1"], "--max-shown"),
            ("a negative hidden size", ["demo", "--hidden", "-1"], "--hidden"),
            ("zero heads", ["demo", "--heads", "0"], "--heads"),
            ("a billion layers", ["demo", "--layers", "1000000000"], "--layers"),
            ("heads not a multiple of kv-heads", ["demo", "--heads", "16", "--kv-heads", "3"],
             "--kv-heads"),
            ("a model past 2^63 bytes", ["demo", "--hidden", "4000000000", "--heads", "1",
                                         "--kv-heads", "1", "--vocab", "4000000000"], "2^63"),
            ("a negative seed", ["demo", "--seed", "-1"], "--seed")]:
        r = d9d(*args)
        check(r.returncode == 2 and flag in r.stderr and "terminate" not in r.stderr,
              f"usage: {what}: exit 2 naming {flag} (got {r.returncode}: {r.stderr.strip()[:300]})")
    check(not os.path.exists(path("u6")), "usage errors left no u6")
    # Sizes are exact integers, whatever their digits.
    for text, size in [("1.5GB", 1_500_000_000), ("1.5 gib", 1_610_612_736), ("4096", 4096),
                       (".5KiB", 512), ("0.0000000000009094947017729282379150390625TiB", 1),
                       ("9223372036854775807", 2**63 - 1),
                       ("8388607.99999999999TiB", int(Fraction("8388607.99999999999") * 2**40))]:
        r = d9d("plan", good, "--spec", LLAMA, "--json", "--shard-size", text)
        got = json.loads(r.stdout)["shard_size"] if r.stdout else r.stderr.strip()
        check(got == size, f"--shard-size {text} is {size} bytes (got {got})")
    for args in (["--help"], ["convert", "--help"], ["--version"]):
        r = d9d(*args)
        check(r.returncode == 0 and r.stdout, f"{' '.join(args)}: exit 0 with output")
    check("--shard-size" in d9d("convert", "--help").stdout, "convert --help lists --shard-size")
    help_text = d9d("convert", "--help").stdout
    check("--no-progress" in help_text and "{false}" not in help_text,
          "--progress and --no-progress are listed as two flags, with no CLI11 notation")
    for flags in (["--progress", "--no-progress"], ["--no-progress", "--progress"]):
        r = d9d("verify", good, good, *flags)
        check(r.returncode == 0, f"verify {' '.join(flags)}: both flags, the last wins ({r.stderr})")

    # ---- a missing shard ------------------------------------------------------------------
    ck = path("missing_shard")
    shutil.copytree(good, ck)
    os.remove(os.path.join(ck, shards[1]))
    expect_failure("missing shard", ["convert", ck, path("out1"), "--spec", LLAMA], [shards[1]],
                   out=path("out1"))
    expect_failure("missing shard (inspect)", ["inspect", ck], [shards[1]])
    expect_failure("missing shard (verify)", ["verify", good, ck], [shards[1]])

    # ---- an index naming a tensor its shard does not hold ------------------------------------
    ck = path("ghost")
    shutil.copytree(good, ck)
    idx = json.load(open(os.path.join(ck, INDEX)))
    idx["weight_map"]["model.layers.0.self_attn.ghost.weight"] = shards[0]
    json.dump(idx, open(os.path.join(ck, INDEX), "w"))
    expect_failure("index names a missing tensor", ["convert", ck, path("out2"), "--spec", LLAMA],
                   ["model.layers.0.self_attn.ghost.weight", shards[0]], out=path("out2"))

    # ---- a truncated shard -------------------------------------------------------------------
    ck = path("truncated")
    shutil.copytree(good, ck)
    victim = os.path.join(ck, shards[2])
    os.truncate(victim, os.path.getsize(victim) - 100)
    expect_failure("truncated shard", ["convert", ck, path("out3"), "--spec", LLAMA], [shards[2]],
                   out=path("out3"))

    # ---- a spec referring to keys the checkpoint lacks ---------------------------------------
    state = llama_state(rng)
    del state["model.layers.1.self_attn.k_proj.weight"]
    ck = fresh("no_k1", state)
    expect_failure("spec source missing from the checkpoint",
                   ["convert", ck, path("out4"), "--spec", LLAMA],
                   ["model.layers.1.self_attn.k_proj.weight"], out=path("out4"))
    expect_failure("spec source missing (plan)", ["plan", ck, "--spec", LLAMA],
                   ["model.layers.1.self_attn.k_proj.weight"])
    # A key no rule matches, under "unmatched": "error".
    state = llama_state(rng)
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, dtype=np.float32)
    ck = fresh("extra_key", state)
    expect_failure("key no rule matches", ["convert", ck, path("out5"), "--spec", LLAMA],
                   ["model.layers.0.self_attn.rotary_emb.inv_freq"], out=path("out5"))
    # A spec that does not fit: its rules match nothing, and the message says which prefix.
    state = {k.removeprefix("model."): v for k, v in llama_state(rng).items()}
    ck = fresh("no_model_prefix", state)
    for command in (["convert", ck, path("out_np"), "--spec", LLAMA], ["plan", ck, "--spec", LLAMA]):
        expect_failure(f"{command[0]}: rules that match nothing", command,
                       ["matches no key of the checkpoint", "lack the prefix 'model.'",
                        '"optional": true'], out=path("out_np"))
    # A rule whose source is not in the checkpoint at all is only "unused" when it says it is
    # optional (the example spec's tied lm_head).
    state = llama_state(rng)
    del state["lm_head.weight"]
    ck = fresh("tied", state)
    r = d9d("convert", ck, path("tied_out"), "--spec", LLAMA)
    check(r.returncode == 0 and "lm_head.weight" not in r.stderr,
          f"a tied lm_head converts, the optional rule that found nothing not a note "
          f"({r.returncode}: {r.stderr.strip()})")
    r = d9d("plan", ck, "--spec", LLAMA)
    check(r.returncode == 0 and "rules that matched nothing: 1" in r.stdout
          and "(identity lm_head.weight) (optional)" in r.stdout, "plan lists the unused rule")

    # ---- malformed specs ---------------------------------------------------------------------
    bad_spec = path("bad_spec.json")
    with open(bad_spec, "w") as fh:
        json.dump({"d9d_mapper_spec": 1, "rules": [{"op": "rename_tensor", "source": "a"}]}, fh)
    expect_failure("spec without a target", ["convert", good, path("out6"), "--spec", bad_spec],
                   ["$.rules[0]", bad_spec], out=path("out6"))
    with open(bad_spec, "w") as fh:
        fh.write("{not json")
    expect_failure("spec that is not JSON", ["convert", good, path("out6"), "--spec", bad_spec],
                   [bad_spec], out=path("out6"))
    expect_failure("spec file missing", ["convert", good, path("out6"), "--spec", path("nope.json")],
                   ["nope.json"], out=path("out6"))

    # ---- shapes and dtypes that do not fit -----------------------------------------------------
    state = llama_state(rng)
    k = state["model.layers.2.self_attn.k_proj.weight"]
    state["model.layers.2.self_attn.k_proj.weight"] = np.concatenate([k, k[:, :1]], axis=1)
    ck = fresh("bad_shape", state)
    expect_failure("q/k/v of different widths", ["convert", ck, path("out7"), "--spec", LLAMA],
                   ["model.layers.2.self_attn.k_proj.weight"], out=path("out7"))
    state = llama_state(rng)
    state["model.layers.1.mlp.up_proj.weight"] = state["model.layers.1.mlp.up_proj.weight"].astype(
        np.float32)
    ck = fresh("bad_dtype", state)
    expect_failure("gate/up of different dtypes", ["convert", ck, path("out8"), "--spec", LLAMA],
                   ["model.layers.1.mlp.up_proj.weight"], out=path("out8"))
    # --reverse with a record that no longer fits the converted tensors (sizes of q/k/v changed).
    fused = path("fused")
    d9d_ok("convert", good, fused, "--spec", LLAMA, "--no-progress")
    rec = json.load(open(os.path.join(fused, SIDECAR)))
    rec["source"]["model.layers.0.self_attn.q_proj.weight"][1][0] += 8
    json.dump(rec, open(os.path.join(fused, SIDECAR), "w"))
    expect_failure("--reverse with a record that does not fit", ["convert", fused, path("out9"),
                                                                 "--reverse"],
                   ["layers.0.attn.qkv.weight"], out=path("out9"))
    os.remove(os.path.join(fused, SIDECAR))
    expect_failure("--reverse without a record", ["convert", fused, path("out9"), "--reverse"],
                   [SIDECAR, "inverse spec"], out=path("out9"))
    with open(os.path.join(fused, SIDECAR), "w") as fh:
        fh.write('{"something": "else"}')
    expect_failure("--reverse with a foreign record", ["convert", fused, path("out9"), "--reverse"],
                   [SIDECAR], out=path("out9"))

    # ---- a tensor larger than a shard: a shard of its own, said (as transformers' splitter) ------
    r = d9d("convert", good, path("out10"), "--spec", LLAMA, "--shard-size", "10KB",
            "--no-progress")
    check(r.returncode == 0 and "larger than --shard-size 10KB" in r.stderr
          and "a shard of its own: embed.weight" in r.stderr,
          f"tensors larger than a shard: converted, with a note naming them ({r.stderr.strip()})")
    index = json.load(open(os.path.join(path("out10"), INDEX)))
    sizes = {}
    for name, file in index["weight_map"].items():
        sizes.setdefault(file, []).append(name)
    check(len(sizes[index["weight_map"]["embed.weight"]]) == 1, "embed.weight is alone in its shard")
    # An existing checkpoint: refused in the command line's words, not the library's.
    r = expect_failure("an existing checkpoint without --overwrite",
                       ["convert", good, path("out10"), "--spec", LLAMA],
                       ["already holds a checkpoint", "pass --overwrite"])
    check("WriteOptions" not in r.stderr and "write_model_state" not in r.stderr,
          f"no library names in the message ({r.stderr.strip()})")
    r = d9d("plan", good, "--spec", LLAMA, "--shard-size", "10KB")
    check(r.returncode == 0 and "each gets a shard of its own" in r.stdout,
          f"plan says so too ({r.stdout.strip()[-200:]})")

    # ---- more shards than shard names: refused before a byte is written -----------------------
    bytes_ck = path("bytes")
    os.makedirs(bytes_ck)
    stnp.save_file({f"t{i}": np.zeros(1, np.uint8) for i in range(100_000)},
                   os.path.join(bytes_ck, "model.safetensors"))
    keep = path("keep.json")
    with open(keep, "w") as fh:
        json.dump({"d9d_mapper_spec": 1, "unmatched": "keep", "rules": []}, fh)
    t0 = time.monotonic()
    expect_failure("100,000 one-byte tensors in one-byte shards",
                   ["convert", bytes_ck, path("out11"), "--spec", keep, "--shard-size", "1"],
                   ["100000 shards", "99999"], out=path("out11"))
    took = time.monotonic() - t0
    check(not os.path.exists(path("out11")) and took < 30,
          f"refused at once ({took:.1f} s), writing nothing")
    expect_failure("100,000 one-byte shards (plan)",
                   ["plan", bytes_ck, "--spec", keep, "--shard-size", "1"], ["100000 shards"])

    # ---- destinations that cannot be written ----------------------------------------------------
    open(path("a_file"), "w").close()
    expect_failure("destination under a regular file",
                   ["convert", good, path("a_file", "out"), "--spec", LLAMA], ["a_file"])
    expect_failure("destination is a regular file", ["convert", good, path("a_file"), "--spec", LLAMA],
                   ["a_file"])
    # /proc takes no new directories, not even from root.
    expect_failure("destination the system refuses", ["convert", good, "/proc/d9d-test-out", "--spec",
                                                      LLAMA], ["/proc/d9d-test-out"])
    if os.geteuid() != 0:  # root writes anywhere
        ro = path("read_only")
        os.makedirs(ro)
        os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR)
        expect_failure("read-only destination", ["convert", good, ro, "--spec", LLAMA], [ro], out=ro)
        expect_failure("destination in a read-only directory",
                       ["convert", good, os.path.join(ro, "out"), "--spec", LLAMA], [ro])
        os.chmod(ro, stat.S_IRWXU)
    else:
        print("note: running as root; the read-only directory cases are skipped")
    # A checkpoint already there is kept unless --overwrite.
    before = {n: open(os.path.join(fused, n), "rb").read() for n in os.listdir(fused)
              if n != SIDECAR}
    r = expect_failure("destination holds a checkpoint", ["convert", good, fused, "--spec", LLAMA],
                       ["--overwrite", fused])
    after = {n: open(os.path.join(fused, n), "rb").read() for n in os.listdir(fused) if n != SIDECAR}
    check(before == after, "the checkpoint already in the destination is untouched")
    expect_failure("destination is the source", ["convert", good, good, "--spec", LLAMA,
                                                 "--overwrite"], [good])
    check(os.path.exists(os.path.join(good, INDEX)), "the source survived")

    # ---- verify: differences are exit 1 with the first differences shown ----------------------
    other = path("other")
    shutil.copytree(good, other)
    state = {}
    target = None
    for f in sorted(os.listdir(other)):
        if f.endswith(".safetensors"):
            t = stnp.load_file(os.path.join(other, f))
            if "model.layers.1.mlp.down_proj.weight" in t:
                target = f
                t["model.layers.1.mlp.down_proj.weight"] = t["model.layers.1.mlp.down_proj.weight"].copy()
                w = t["model.layers.1.mlp.down_proj.weight"]
                w[3, 7] = np.asarray(1000.0, dtype=BF16)
                w[5, 0] = np.asarray(-2048.0, dtype=BF16)
                stnp.save_file(t, os.path.join(other, f), metadata={"format": "pt"})
    check(target is not None, "found the tensor to change")
    r = d9d("verify", good, other, "--no-progress")
    check(r.returncode == 1, f"verify of different checkpoints: exit 1 (got {r.returncode})")
    check("model.layers.1.mlp.down_proj.weight" in r.stdout and "[3, 7]" in r.stdout and
          "B 1000 (0x447a)" in r.stdout and "[5, 0]" in r.stdout and "B -2048 (0xc500)" in r.stdout,
          f"verify names the tensor, the index and the values:\n{r.stdout}")
    check("2 of " in r.stdout, "verify counts the differing elements")
    del_state = llama_state(rng)
    del del_state["model.norm.weight"]
    fewer = fresh("fewer", del_state)
    r = d9d("verify", good, fewer, "--no-progress")
    check(r.returncode == 1 and "only in A (1): model.norm.weight" in r.stdout,
          f"verify lists a tensor only in A:\n{r.stdout}")
    nothing_partial(path("never"), "sanity")

finish("cli_bad_input")
