#!/usr/bin/env python3
"""The d9d commands end to end on checkpoints d9d makes itself (`d9d demo --dir`):

- demo runs, says OK, and leaves the three checkpoints;
- inspect (table and --json) agrees with the index;
- plan's shard layout is exactly what convert writes, for several shard sizes;
- the conversion record (d9d-conversion.json) is written, is not part of the checkpoint, and
  --reverse undoes the conversion bit-exact; an explicit inverse spec does the same;
- threads, a small memory budget and --overwrite give identical checkpoints;
- "unmatched": "keep" / "drop" specs round-trip what they can, and verify reports what they
  cannot.

  python3 roundtrip.py D9D SPECS_DIR
"""
import json
import os
import shutil
import tempfile

from clitest import (INDEX, SIDECAR, SPECS, check, checkpoint_index, d9d, d9d_ok, finish,
                     load_checkpoint, spec)

LLAMA = spec("llama_hf_to_fused.json")
HIDDEN, LAYERS, HEADS, KV, INTER, VOCAB = 128, 3, 8, 2, 352, 1000
HEAD_DIM = HIDDEN // HEADS

with tempfile.TemporaryDirectory() as tmp:
    def path(*p):
        return os.path.join(tmp, *p)

    # ---- demo ---------------------------------------------------------------------------------
    work = path("demo")
    r = d9d_ok("demo", "--dir", work, "--hidden", HIDDEN, "--layers", LAYERS, "--heads", HEADS,
               "--kv-heads", KV, "--intermediate", INTER, "--vocab", VOCAB, "--shard-size", "300KB")
    print(r.stdout)
    check("d9d demo: OK" in r.stdout, "demo reports OK")
    for step in ("1. write", "2. convert", "3. verify", "4. convert", "5. verify", "GB/s"):
        check(step in r.stdout, f"demo prints {step!r}")
    original, fused, back = (os.path.join(work, n) for n in ("llama-hf", "fused", "llama-hf-back"))
    for d in (original, fused, back):
        check(os.path.exists(os.path.join(d, INDEX)), f"{d} has an index")
    r = d9d("demo", "--hidden", 64, "--heads", 6)
    check(r.returncode == 2 and "--heads" in r.stderr,
          "demo rejects a hidden size heads do not divide: a usage error")

    # ---- inspect --------------------------------------------------------------------------------
    info = json.loads(d9d_ok("inspect", fused, "--json").stdout)
    index = json.load(open(os.path.join(fused, INDEX)))
    check(info["total_tensors"] == len(index["weight_map"]) == 3 + 6 * LAYERS,
          f"inspect counts {info['total_tensors']} tensors")
    check(info["total_size"] == index["metadata"]["total_size"], "inspect's total is the index's")
    check({t["name"]: t["file"] for t in info["tensors"]} == index["weight_map"],
          "inspect puts every tensor in the index's file")
    qkv = next(t for t in info["tensors"] if t["name"] == "layers.1.attn.qkv.weight")
    check(qkv["shape"] == [(HEADS + 2 * KV) * HEAD_DIM, HIDDEN] and qkv["dtype"] == "BF16",
          f"fused qkv shape {qkv['shape']}")
    table = d9d_ok("inspect", fused).stdout
    check("layers.1.attn.qkv.weight" in table and f"{info['total_tensors']} tensors" in table,
          "inspect prints a table and the totals")
    check(" KB" in table and " kB" not in table,
          "inspect writes sizes as --shard-size reads them (KB, not kB)")
    check("sizes:" not in d9d_ok("inspect", "--help").stdout,
          "inspect --help: no sizes footer (it takes no size)")
    check("sizes:" in d9d_ok("convert", "--help").stdout, "convert --help: how sizes are written")
    single = path("single.safetensors")
    shutil.copy(os.path.join(original, sorted(set(json.load(open(os.path.join(original, INDEX)))
                                                  ["weight_map"].values()))[0]), single)
    check(d9d("inspect", single).returncode == 0, "inspect reads a single .safetensors file")

    # ---- the conversion record ----------------------------------------------------------------
    record = json.load(open(os.path.join(fused, SIDECAR)))
    builtin_llama = os.path.join(SPECS, "..", "..", "specs", "llama.json")  # what demo uses
    check(record["d9d_conversion"] == 1 and record["spec"] == open(builtin_llama).read()
          and record["spec_origin"] == "specs/llama.json (built-in)",
          "the record holds the spec's text and names it")
    orig_info = json.loads(d9d_ok("inspect", original, "--json").stdout)
    check({t["name"]: [t["dtype"], t["shape"]] for t in orig_info["tensors"]} == record["source"],
          "the record holds every source tensor's dtype and shape")
    check(SIDECAR not in index["weight_map"].values(), "the record is not a shard")

    # ---- plan == convert, for several shard sizes ---------------------------------------------
    for size in ("260KB", "1MB", "5GB"):
        plan = json.loads(d9d_ok("plan", original, "--spec", LLAMA, "--shard-size", size, "--json")
                          .stdout)
        out = path(f"out_{size}")
        d9d_ok("convert", original, out, "--spec", LLAMA, "--shard-size", size, "--no-progress")
        got = checkpoint_index(out)
        check(plan["ok"] and {o["name"]: o["file"] for o in plan["outputs"]} == got["weight_map"],
              f"plan's layout at --shard-size {size} is convert's")
        check(sum(o["bytes"] for o in plan["outputs"]) == got["metadata"]["total_size"],
              f"plan's bytes at {size}")
        qkv_in = next(o["inputs"] for o in plan["outputs"] if o["name"].endswith("attn.qkv.weight"))
        check([n.split(".")[-2] for n in qkv_in] == ["q_proj", "k_proj", "v_proj"],
              f"plan --json lists a fusion's inputs in the op's order ({qkv_in})")
        r = d9d("verify", out, fused, "--no-progress")
        check(r.returncode == 0, f"convert at {size} equals the demo's fused checkpoint")
    plan = d9d_ok("plan", fused, "--reverse").stdout
    check("plan: ok" in plan and "model.layers.0.self_attn.q_proj.weight" in plan,
          "plan --reverse plans the inverse")

    # ---- --reverse, and an explicit inverse spec ------------------------------------------------
    back2 = path("back2")
    d9d_ok("convert", fused, back2, "--reverse", "--no-progress")
    check(not os.path.exists(os.path.join(back2, SIDECAR)), "a reverse conversion leaves no record")
    check(d9d("verify", back2, original).returncode == 0, "--reverse is bit-exact")
    inverse = json.load(open(spec("fused_to_llama_hf.json")))
    for rule in inverse["rules"]:
        if rule["op"] in ("split", "split_tensors"):
            rule["sizes"] = [HEADS * HEAD_DIM, KV * HEAD_DIM, KV * HEAD_DIM]
    inv_path = path("inverse.json")
    json.dump(inverse, open(inv_path, "w"))
    back3 = path("back3")
    d9d_ok("convert", fused, back3, "--spec", inv_path, "--no-progress")
    check(d9d("verify", back3, original).returncode == 0, "an explicit inverse spec is bit-exact")
    a = load_checkpoint(back3)
    b = load_checkpoint(original)
    check(a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a),
          "Python safetensors reads the same bytes")

    # ---- threads, budget, overwrite -------------------------------------------------------------
    slow = path("slow")
    r = d9d_ok("convert", original, slow, "--spec", LLAMA, "--threads", 1, "--memory-budget",
               "64KiB", "--shard-size", "300KB", "--no-progress")
    check("needed more than --memory-budget 64KiB and" in r.stderr and "read alone" in r.stderr,
          f"groups larger than the budget are said ({r.stderr.strip()})")
    check(d9d("verify", slow, fused).returncode == 0, "one thread and a tiny budget: same tensors")
    d9d_ok("convert", original, slow, "--spec", LLAMA, "--overwrite", "--shard-size", "5GB",
           "--no-progress")
    names = sorted(n for n in os.listdir(slow) if n.endswith(".safetensors") or n.endswith(".json"))
    check(names == ["d9d-conversion.json", "d9d-hashes.json", "model.safetensors"],
          f"--overwrite leaves only the new checkpoint: one model.safetensors, the old shards and "
          f"index gone {names}")
    check(d9d("verify", slow, fused).returncode == 0, "--overwrite wrote the same tensors")
    check(d9d("verify", original, fused, "--spec", LLAMA).returncode == 0, "verify --spec")
    r = d9d("verify", original, fused)
    check(r.returncode == 1 and "only in A" in r.stdout and "only in B" in r.stdout,
          "verify without the spec reports the renamed tensors")

    # ---- "unmatched": keep and drop -------------------------------------------------------------
    partial = {"d9d_mapper_spec": 1, "unmatched": "keep", "rules": [
        {"op": "rename_tensor", "source": "model.norm.weight", "target": "final_norm.weight"},
        {"op": "transpose", "source": "model.layers.{L}.mlp.down_proj.weight", "dims": [0, 1]}]}
    for policy in ("keep", "drop"):
        partial["unmatched"] = policy
        sp = path(f"{policy}.json")
        json.dump(partial, open(sp, "w"))
        out, rev = path(f"{policy}_out"), path(f"{policy}_back")
        d9d_ok("convert", original, out, "--spec", sp, "--no-progress")
        keys = {t["name"] for t in json.loads(d9d_ok("inspect", out, "--json").stdout)["tensors"]}
        if policy == "keep":
            check(len(keys) == len(record["source"]) and "final_norm.weight" in keys,
                  "keep passes the other tensors through")
        else:
            check(keys == {"final_norm.weight"} | {f"model.layers.{i}.mlp.down_proj.weight"
                                                   for i in range(LAYERS)}, f"drop keeps {keys}")
            check(len(json.load(open(os.path.join(out, SIDECAR)))["dropped"]) ==
                  len(record["source"]) - len(keys), "the record lists the dropped tensors")
        d9d_ok("convert", out, rev, "--reverse", "--no-progress")
        r = d9d("verify", rev, original)
        if policy == "keep":
            check(r.returncode == 0, "keep: --reverse is bit-exact (transpose undone)")
        else:
            check(r.returncode == 1 and f"0 of {LAYERS + 1} compared tensors differ" in r.stdout
                  and "only in B" in r.stdout, f"drop: verify lists what cannot come back\n{r.stdout}")

    # ---- --reverse of a lossy conversion: refused, or with --allow-lossy the recorded dtypes ----
    import ml_dtypes
    import numpy as np
    import safetensors.numpy as stnp
    rng = np.random.default_rng(7)
    f32 = {f"w.{i}": rng.standard_normal((16, 8)).astype(np.float32) for i in range(7)}
    ids = np.arange(300, dtype=np.int64)[None, :] * 7 + 3  # above BF16's exact integers
    lossy_src = path("lossy_src")
    os.makedirs(lossy_src)
    stnp.save_file({**f32, "position_ids": ids, "b.half": f32["w.0"].astype(np.float16)},
                   os.path.join(lossy_src, "model.safetensors"), metadata={"format": "pt"})
    cast = {"d9d_mapper_spec": 1, "rules": [
        {"op": "cast", "source": "{x...}", "dtype": "BF16", "from": ["F32"]}]}
    cast_path = path("to_bf16.json")
    json.dump(cast, open(cast_path, "w"))
    lossy_out = path("lossy_out")
    d9d_ok("convert", lossy_src, lossy_out, "--spec", cast_path, "--no-progress")
    check(sorted(os.listdir(lossy_out)) ==
          ["d9d-conversion.json", "d9d-hashes.json", "model.safetensors"],
          f"one shard: model.safetensors and no index, as save_pretrained ({os.listdir(lossy_out)})")
    r = d9d("convert", lossy_out, path("lossy_refused"), "--reverse", "--no-progress")
    check(r.returncode == 1 and "loses values" in r.stderr and "--allow-lossy" in r.stderr,
          f"--reverse of F32 -> BF16 is refused, naming --allow-lossy ({r.stderr.strip()})")
    check(not os.path.exists(path("lossy_refused")), "and writes nothing")
    r = d9d("convert", lossy_src, path("lossy_x"), "--spec", cast_path, "--allow-lossy")
    check(r.returncode == 2 and "--allow-lossy goes with --reverse" in r.stderr,
          f"--allow-lossy without --reverse is a usage error ({r.returncode}: {r.stderr.strip()})")
    plan = d9d_ok("plan", lossy_out, "--reverse", "--allow-lossy").stdout
    check("7 tensors come back as F32 holding the values the conversion rounded to BF16" in plan,
          f"plan --reverse --allow-lossy says what is lost\n{plan}")
    lossy_back = path("lossy_back")
    r = d9d_ok("convert", lossy_out, lossy_back, "--reverse", "--allow-lossy", "--no-progress")
    check("d9d: note: --allow-lossy: 7 tensors come back as F32 holding the values the "
          "conversion rounded to BF16 (w.0, w.1, w.2, w.3, w.4, and 2 more)" in r.stderr,
          f"the note names what was lost ({r.stderr.strip()})")
    back_state = load_checkpoint(lossy_back)
    check(sorted(back_state) == sorted([*f32, "position_ids", "b.half"]), "every tensor comes back")
    for k, v in f32.items():
        rounded = v.astype(ml_dtypes.bfloat16).astype(np.float32)  # the oracle: numpy + ml_dtypes
        check(back_state[k].dtype == np.float32 and back_state[k].tobytes() == rounded.tobytes(),
              f"{k}: F32 again, holding the BF16-rounded values")
    check(any(not np.array_equal(back_state[k], f32[k]) for k in f32), "(the values were rounded)")
    check(back_state["position_ids"].dtype == np.int64 and
          np.array_equal(back_state["position_ids"], ids), "the I64 ids were never cast")
    check(back_state["b.half"].dtype == np.float16 and
          back_state["b.half"].tobytes() == f32["w.0"].astype(np.float16).tobytes(),
          "the F16 tensor was never cast")
    r = d9d("verify", lossy_back, lossy_src, "--atol", "0", "--rtol", "0.01")
    check(r.returncode == 0, f"verify with a tolerance accepts the round trip ({r.stdout[-500:]})")

finish("cli_roundtrip")
