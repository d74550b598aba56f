#!/usr/bin/env python3
"""Real checkpoints not written by d9d, both ways, with numpy as the oracle.

1. A GQA Llama checkpoint written by Python `safetensors` and sharded by huggingface_hub's own
   splitter (BF16 weights, F32 norms) converts with examples/specs/llama_hf_to_fused.json, and
   the result loads in Python `safetensors` with the expected fused shapes and values:
   qkv = np.concatenate([q, k, v]), gate_up = np.concatenate([gate, up]), renames unchanged, and
   an index whose weight_map and total_size describe the shards.
2. Converting back with --reverse gives every original tensor bit-exact (compared in Python and
   by `d9d verify`).
3. The same for a single-file model.safetensors with no index, and for a checkpoint whose
   tensors hold arbitrary bit patterns (NaNs, infinities, subnormals).
4. `d9d verify --max-ulp / --atol / --rtol` on checkpoints whose floats differ by known amounts
   (numpy's isclose and bit distances as the oracle): what passes, what does not, and integers
   never within a tolerance.

  python3 interop.py D9D SPECS_DIR
"""
import json
import os
import tempfile

import numpy as np
import safetensors

from clitest import (BF16, INDEX, check, checkpoint_index, d9d, d9d_ok, finish, llama_state,
                     load_checkpoint, save_hub_sharded, spec)

LLAMA = spec("llama_hf_to_fused.json")
rng = np.random.default_rng(20261128)


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def check_fused(state, out, layers, what):
    """The numpy oracle for llama_hf_to_fused.json."""
    got = load_checkpoint(out)
    want = {"embed.weight": state["model.embed_tokens.weight"],
            "norm.weight": state["model.norm.weight"]}
    if "lm_head.weight" in state:
        want["lm_head.weight"] = state["lm_head.weight"]
    for i in range(layers):
        p = f"model.layers.{i}."
        q = f"layers.{i}."
        want[q + "attn.qkv.weight"] = np.concatenate(
            [state[p + "self_attn.q_proj.weight"], state[p + "self_attn.k_proj.weight"],
             state[p + "self_attn.v_proj.weight"]], axis=0)
        want[q + "mlp.gate_up.weight"] = np.concatenate(
            [state[p + "mlp.gate_proj.weight"], state[p + "mlp.up_proj.weight"]], axis=0)
        want[q + "attn.out.weight"] = state[p + "self_attn.o_proj.weight"]
        want[q + "mlp.down.weight"] = state[p + "mlp.down_proj.weight"]
        want[q + "attn_norm.weight"] = state[p + "input_layernorm.weight"]
        want[q + "mlp_norm.weight"] = state[p + "post_attention_layernorm.weight"]
    check(sorted(got) == sorted(want), f"{what}: the fused names ({len(got)} tensors)")
    bad = [k for k in want if k in got and not same(got[k], want[k])]
    check(not bad, f"{what}: fused shapes and values equal numpy's concatenation (bad: {bad[:5]})")
    # The index: every tensor in the shard that holds it, total_size the sum of tensor bytes.
    index = checkpoint_index(out)
    check(sum(a.nbytes for a in got.values()) == index["metadata"]["total_size"],
          f"{what}: index total_size")
    for name, file in index["weight_map"].items():
        with safetensors.safe_open(os.path.join(out, file), framework="np") as f:
            check(name in f.keys(), f"{what}: {name} is in {file}")
            check(f.metadata() == {"format": "pt"}, f"{what}: {file} says format pt")
    return got


def round_trip(state, ckpt, layers, what, shard_size="5GB"):
    out = ckpt + "-fused"
    back = ckpt + "-back"
    d9d_ok("convert", ckpt, out, "--spec", LLAMA, "--shard-size", shard_size, "--no-progress")
    check_fused(state, out, layers, what)
    d9d_ok("convert", out, back, "--reverse", "--no-progress")
    got = load_checkpoint(back)
    check(sorted(got) == sorted(state), f"{what}: --reverse gives back every name")
    bad = [k for k in state if k in got and not same(got[k], state[k])]
    check(not bad, f"{what}: --reverse is bit-exact in Python (bad: {bad[:5]})")
    r = d9d("verify", back, ckpt, "--no-progress")
    check(r.returncode == 0, f"{what}: d9d verify agrees ({r.stdout.strip()})")
    r = d9d("verify", ckpt, out, "--spec", LLAMA, "--no-progress")
    check(r.returncode == 0, f"{what}: d9d verify --spec agrees ({r.stdout.strip()})")


with tempfile.TemporaryDirectory() as tmp:
    # 1 + 2: hub-sharded, GQA (8 query heads, 2 KV heads), BF16 weights with F32 norms.
    layers = 4
    state = llama_state(rng, hidden=128, layers=layers, heads=8, kv_heads=2, intermediate=344,
                        vocab=512, dtype=BF16, norm_dtype=np.float32)
    ckpt = os.path.join(tmp, "hub")
    split = save_hub_sharded(state, ckpt, max_shard_size=200_000)
    check(split.is_sharded and len(split.filename_to_tensors) >= 3,
          f"the hub split the model into {len(split.filename_to_tensors)} shards")
    # Groups whose inputs span shards: q, k and v of some layer live in different files.
    spans = [i for i in range(layers)
             if len({split.tensor_to_filename[f"model.layers.{i}.self_attn.{p}_proj.weight"]
                     for p in "qkv"} | {split.tensor_to_filename[f"model.layers.{i}.mlp.{p}_proj.weight"]
                                        for p in ("gate", "up")}) > 1]
    check(len(spans) > 0, "some layer's group spans shards")
    round_trip(state, ckpt, layers, "hub-sharded", shard_size="300KB")

    # 3a: a single model.safetensors, no index (what small models ship).
    state = llama_state(rng, hidden=64, layers=2, heads=4, kv_heads=1, intermediate=96, vocab=128)
    del state["lm_head.weight"]  # tied embeddings: the spec's lm_head rule matches nothing
    ckpt = os.path.join(tmp, "single")
    save_hub_sharded(state, ckpt, max_shard_size=10**9)
    check(os.listdir(ckpt) == ["model.safetensors"], "a single file, no index")
    round_trip(state, ckpt, 2, "single file")

    # 3b: arbitrary bit patterns survive the trip.
    state = llama_state(rng, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96, vocab=128,
                        random_bits=True)
    ckpt = os.path.join(tmp, "bits")
    save_hub_sharded(state, ckpt, max_shard_size=60_000)
    round_trip(state, ckpt, 2, "random bits", shard_size="100KB")

    # 4: verify within a tolerance.
    a = {"w": rng.standard_normal((64, 32), dtype=np.float32).astype(BF16),
         "f": rng.standard_normal((100,), dtype=np.float32),
         "i": np.arange(10, dtype=np.int64)}
    b = {k: v.copy() for k, v in a.items()}
    wb = b["w"].view(np.uint16)
    wb[0, :5] += 1                      # 1 ULP (BF16)
    wb[1, :3] += 3                      # 3 ULP
    wb[2, 0] = 0x7FC1                   # NaN ... (5 + 3 + 1 + 4 elements differ)
    a["w"].view(np.uint16)[2, 0] = 0x7FC0  # ... against another NaN: both NaN passes
    b["f"][:4] += np.float32(1e-3)      # F32, absolute 1e-3
    ta, tb = os.path.join(tmp, "tol-a"), os.path.join(tmp, "tol-b")
    save_hub_sharded(a, ta, max_shard_size=10**9)
    save_hub_sharded(b, tb, max_shard_size=10**9)
    r = d9d("verify", ta, tb, "--no-progress")
    check(r.returncode == 1, f"verify without a tolerance: the floats differ ({r.stdout.strip()})")
    r = d9d("verify", ta, tb, "--max-ulp", "1", "--no-progress")
    check(r.returncode == 1 and "w: BF16[64, 32]: 3 of 2048 elements differ beyond the tolerance"
          in r.stdout and "f: F32[100]: 4 of 100" in r.stdout,
          f"--max-ulp 1: the 3-ULP elements and the F32 ones are beyond it ({r.stdout.strip()})")
    ulp_f = int(np.abs(b["f"][:4].view(np.int32).astype(np.int64)
                       - a["f"][:4].view(np.int32).astype(np.int64)).max())
    r = d9d("verify", ta, tb, "--max-ulp", str(ulp_f), "--no-progress")
    check(r.returncode == 0 and "equal within the tolerance" in r.stdout
          and "13 elements differ within the tolerance" in r.stdout and f"{ulp_f} ULP" in r.stdout,
          f"--max-ulp {ulp_f} (numpy's largest F32 distance): equal, with the count ({r.stdout.strip()})")
    wa32 = a["w"].astype(np.float32)
    wb32 = b["w"].astype(np.float32)
    both = ~(np.isnan(wa32) | np.isnan(wb32))
    atol = float(np.abs(wa32 - wb32)[both].max())
    check(not np.allclose(wa32[both], wb32[both], rtol=0, atol=atol / 2),
          "the oracle: half the largest difference is too tight")
    r = d9d("verify", ta, tb, "--atol", repr(atol / 2), "--no-progress")
    check(r.returncode == 1, f"--atol below the largest difference fails ({r.stdout.strip()})")
    r = d9d("verify", ta, tb, "--atol", repr(max(atol, 1e-3) * 1.01), "--no-progress")
    check(r.returncode == 0, f"--atol above every difference passes ({r.stdout.strip()})")
    r = d9d("verify", ta, tb, "--rtol", "0.05", "--no-progress")
    want = np.isclose(wa32[both], wb32[both], rtol=0.05, atol=0).all() and \
        np.isclose(a["f"], b["f"], rtol=0.05, atol=0).all()
    check((r.returncode == 0) == bool(want), f"--rtol 0.05 agrees with numpy.isclose ({want}; "
          f"{r.stdout.strip()})")
    b["i"][3] += 1
    save_hub_sharded(b, tb, max_shard_size=10**9)
    r = d9d("verify", ta, tb, "--atol", "10", "--max-ulp", "100", "--no-progress")
    check(r.returncode == 1 and "i: I64[10]: 1 of 10 elements differ" in r.stdout,
          f"integers are never within a tolerance ({r.stdout.strip()})")
    # F64 values of opposite signs at the ends of the range: almost 2^64 ULPs apart.
    da, db = os.path.join(tmp, "f64-a"), os.path.join(tmp, "f64-b")
    save_hub_sharded({"d": np.array([-1.7e308, 1.0, -0.0])}, da, max_shard_size=10**9)
    save_hub_sharded({"d": np.array([1.7e308, 1.0, 0.0])}, db, max_shard_size=10**9)
    r = d9d("verify", da, db, "--max-ulp", str(2**62), "--no-progress")
    check(r.returncode == 1 and "d: F64[3]: 1 of 3 elements differ beyond" in r.stdout
          and "1 elements differ within the tolerance" in r.stdout,
          f"F64: -0.0 and 0.0 (equal values, other bits) pass; -1.7e308 and 1.7e308 are beyond any "
          f"--max-ulp ({r.stdout.strip()})")

finish("cli_interop")
