"""Helpers shared by the CLI test drivers: running d9d, making checkpoints with Python's
safetensors and huggingface_hub, and the checks every failing run must pass."""
import json
import os
import re
import subprocess
import sys

import ml_dtypes
import numpy as np
import safetensors.numpy as stnp
from huggingface_hub import split_state_dict_into_shards_factory

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from oracle import check, finish  # noqa: E402,F401 - the drivers import them from here

D9D = os.path.abspath(sys.argv[1])
SPECS = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else None

BF16 = np.dtype(ml_dtypes.bfloat16)
FINAL_NAME = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$")
INDEX = "model.safetensors.index.json"
SIDECAR = "d9d-conversion.json"
HASHES = "d9d-hashes.json"

def d9d(*args, timeout=300):
    """Runs d9d; returns the CompletedProcess (text)."""
    return subprocess.run([D9D, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def d9d_ok(*args, timeout=300):
    r = d9d(*args, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"d9d {' '.join(map(str, args))} failed ({r.returncode}):\n"
                           f"{r.stdout}\n{r.stderr}")
    return r


def spec(name):
    return os.path.join(SPECS, name)


def llama_state(rng, hidden=64, layers=3, heads=4, kv_heads=2, intermediate=160, vocab=256,
                dtype=BF16, norm_dtype=None, random_bits=False):
    """A Llama-family state dict in transformers' names (GQA: kv_heads < heads)."""
    head_dim = hidden // heads

    def w(*shape, dt=dtype):
        if random_bits:  # any bit pattern (NaNs included): the tests compare bits
            return rng.integers(0, 1 << 16, size=shape, dtype=np.uint16).view(dt)
        return rng.standard_normal(shape, dtype=np.float32).astype(dt)

    nd = norm_dtype or dtype
    s = {"model.embed_tokens.weight": w(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = w(hidden, dt=nd)
        s[p + "self_attn.q_proj.weight"] = w(heads * head_dim, hidden)
        s[p + "self_attn.k_proj.weight"] = w(kv_heads * head_dim, hidden)
        s[p + "self_attn.v_proj.weight"] = w(kv_heads * head_dim, hidden)
        s[p + "self_attn.o_proj.weight"] = w(hidden, heads * head_dim)
        s[p + "post_attention_layernorm.weight"] = w(hidden, dt=nd)
        s[p + "mlp.gate_proj.weight"] = w(intermediate, hidden)
        s[p + "mlp.up_proj.weight"] = w(intermediate, hidden)
        s[p + "mlp.down_proj.weight"] = w(hidden, intermediate)
    s["model.norm.weight"] = w(hidden, dt=nd)
    s["lm_head.weight"] = w(vocab, hidden)
    return s


def save_hub_sharded(state, ckpt, max_shard_size):
    """Writes `state` as transformers / huggingface_hub do: the hub's own splitter, one
    safetensors file per shard, and the index. Returns the split."""
    split = split_state_dict_into_shards_factory(
        state, get_storage_size=lambda a: a.nbytes,
        filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size)
    os.makedirs(ckpt, exist_ok=True)
    for filename, names in split.filename_to_tensors.items():
        stnp.save_file({k: state[k] for k in names}, os.path.join(ckpt, filename),
                       metadata={"format": "pt"})
    if split.is_sharded:
        with open(os.path.join(ckpt, INDEX), "w") as fh:
            json.dump({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, fh,
                      indent=2)
    return split


def load_checkpoint(ckpt):
    """Every tensor of a checkpoint directory, read by Python's safetensors."""
    index = os.path.join(ckpt, INDEX)
    if os.path.exists(index):
        with open(index) as fh:
            files = sorted(set(json.load(fh)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for f in files:
        out.update(stnp.load_file(os.path.join(ckpt, f)))
    return out


def checkpoint_index(ckpt):
    """The index of a checkpoint directory as JSON; for a lone model.safetensors (what transformers
    and `d9d convert` write for one shard), the index it would have: every tensor in that file,
    total_size the bytes of its tensors."""
    index = os.path.join(ckpt, INDEX)
    if os.path.exists(index):
        with open(index) as fh:
            return json.load(fh)
    with open(os.path.join(ckpt, "model.safetensors"), "rb") as fh:
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    header.pop("__metadata__", None)
    return {"metadata": {"total_size": sum(t["data_offsets"][1] - t["data_offsets"][0]
                                           for t in header.values())},
            "weight_map": {name: "model.safetensors" for name in header}}


def is_temporary(name):
    """A temporary file of d9d's writers (.d9d-shard-*, .<name>.d9d-tmp-*)."""
    return name.startswith(".") and "d9d" in name


def final_files(out):
    """Files under a final name: shards, the single file, the index, the conversion record."""
    return sorted(n for n in os.listdir(out) if FINAL_NAME.match(n) or n in (INDEX, SIDECAR))


def nothing_partial(out, what):
    """After a failed run: no file under a final name, no index, no conversion record and no
    temporary left behind in `out` (which may not exist at all)."""
    if not os.path.isdir(out):
        return check(True, what)
    names = os.listdir(out)
    bad = [n for n in names if FINAL_NAME.match(n) or n in (INDEX, SIDECAR) or is_temporary(n)]
    return check(not bad, f"{what}: nothing partial in {out} (found {bad})")


def expect_failure(what, args, needles, out=None, code=1):
    """Runs d9d expecting exit `code` with every needle in standard error."""
    r = d9d(*args)
    ok = check(r.returncode == code, f"{what}: exit {code} (got {r.returncode}; {r.stderr.strip()})")
    if code == 1:
        check("d9d: error: " in r.stderr, f"{what}: 'd9d: error:' in {r.stderr!r}")
    for n in needles:
        check(n in r.stderr, f"{what}: {n!r} in the message {r.stderr.strip()!r}")
    if out is not None:
        nothing_partial(out, what)
    if ok:
        print(f"ok: {what}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    return r
