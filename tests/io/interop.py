#!/usr/bin/env python3
"""Interop of d9d's io layer with the reference implementation, both ways.

  python3 interop.py IO_TOOL

1. Files written by Python `safetensors` (every dtype numpy can make, plus BF16 / F8 / F4 / F6
   through the raw API; scalars, empty tensors, metadata) read bit-identically in d9d, in the
   reference's offset order; and d9d, rewriting them, produces byte-identical files.
2. Files d9d writes (8- and 4096-byte alignment, strided sources) load in Python with identical
   bytes and metadata.
3. A sharded checkpoint split by huggingface_hub's own helper reads as one checkpoint.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import safetensors
import safetensors.numpy as stnp
from huggingface_hub import split_state_dict_into_shards_factory

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from oracle import check, finish  # noqa: E402

TOOL = sys.argv[1]


def tool(*args):
    out = subprocess.run([TOOL, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"io_tool {' '.join(args)} failed ({out.returncode}): {out.stderr}")
    return out.stdout


def dump(path):
    return json.loads(tool("dump", path))


rng = np.random.default_rng(20261128)


def numpy_tensors():
    out = {}
    dtypes = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64,
              np.int64, np.float16, np.float32, np.float64, np.complex64]
    for dt in dtypes:
        name = np.dtype(dt).name
        raw = rng.integers(0, 256, size=(3, 5) * 1 + (np.dtype(dt).itemsize,), dtype=np.uint8)
        a = raw.view(dt).reshape(3, 5) if dt is not np.bool_ else (raw[..., 0] & 1).astype(bool)
        out[f"{name}.matrix"] = np.ascontiguousarray(a)
        out[f"{name}.scalar"] = np.ascontiguousarray(a[0, 0])  # shape ()
        out[f"{name}.empty"] = np.zeros((0, 4), dtype=dt)
    out["nested/name with spaces and \u00e9\u20ac"] = np.arange(7, dtype=np.int32)
    return out


def raw_tensors():
    """Dtypes numpy cannot make, written through the reference's raw serializer."""
    specs = {"BF16": (16, [4, 3]), "F8_E4M3": (8, [5]), "F8_E5M2": (8, [2, 2]),
             "F8_E8M0": (8, [3]), "F4": (4, [2, 4]), "F6_E2M3": (6, [4]), "F6_E3M2": (6, [8]),
             "F16": (16, []), "F8_E4M3FNUZ": (8, [2]), "F8_E5M2FNUZ": (8, [1])}
    out = {}
    for dtype, (bits, shape) in specs.items():
        n = int(np.prod(shape)) if shape else 1
        nbytes = n * bits // 8
        out[f"raw.{dtype}"] = {"dtype": dtype, "shape": shape,
                                "data": rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()}
    return out


# safetensors >= 0.7 takes raw tensors as TensorSpec(dtype=<torch-style name>, shape, data_ptr,
# data_len); older versions took {"dtype": <safetensors name>, "shape", "data"} dicts.
TORCH_NAMES = {"BF16": "bfloat16", "F16": "float16", "F8_E4M3": "float8_e4m3fn",
               "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
               "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
               "F4": "float4_e2m1fn_x2"}
_alive = []


def raw_spec(spec):
    if not hasattr(safetensors, "TensorSpec"):
        return spec
    buf = np.frombuffer(spec["data"], dtype=np.uint8).copy()
    _alive.append(buf)
    shape = list(spec["shape"])
    if spec["dtype"] == "F4":  # the spec takes F4's storage shape: two values per byte
        shape[-1] //= 2
    return safetensors.TensorSpec(dtype=TORCH_NAMES.get(spec["dtype"], spec["dtype"]), shape=shape,
                                  data_ptr=buf.ctypes.data, data_len=len(spec["data"]))


def supported_raw():
    """The raw dtypes this version of the reference can write (0.8 cannot write F6)."""
    ok = {}
    for name, spec in raw_tensors().items():
        try:
            safetensors.serialize({name: raw_spec(spec)})
            ok[name] = spec
        except Exception as e:  # noqa: BLE001 - an unknown dtype is reported as a generic error
            print(f"note: the reference cannot write {spec['dtype']} ({e}); skipped", file=sys.stderr)
    return ok


with tempfile.TemporaryDirectory() as tmp:
    # ---- 1. Python writes, d9d reads ---------------------------------------------------------
    tensors = numpy_tensors()
    meta = {"format": "pt", "note": "caf\u00e9 \"quoted\" \\ back\nslash"}
    py_file = os.path.join(tmp, "py.safetensors")
    stnp.save_file(tensors, py_file, metadata=meta)
    d = dump(py_file)
    check(d["metadata"] == meta, "metadata read back")
    names = [t["name"] for t in d["tensors"]]
    with safetensors.safe_open(py_file, framework="np") as f:
        check(names == list(f.offset_keys()), "file order equals the reference's offset order")
        for t in d["tensors"]:
            ref = f.get_tensor(t["name"])
            check(list(ref.shape) == t["shape"], f"shape of {t['name']}")
            check(bytes.fromhex(t["hex"]) == ref.tobytes(), f"bytes of {t['name']}")
    # The raw dtypes.
    raw = supported_raw()
    raw_file = os.path.join(tmp, "raw.safetensors")
    safetensors.serialize_file({k: raw_spec(v) for k, v in raw.items()}, raw_file,
                                metadata={"format": "pt"})
    d = dump(raw_file)
    for t in d["tensors"]:
        spec = raw[t["name"]]
        check(t["dtype"] == spec["dtype"] and t["shape"] == spec["shape"], f"info of {t['name']}")
        check(bytes.fromhex(t["hex"]) == spec["data"], f"bytes of {t['name']}")
    check(len(d["tensors"]) == len(raw), "every raw tensor listed")

    # d9d rewrites the reference's files byte for byte (one metadata key: the reference orders
    # several keys by a hash map's whim).
    for src in (raw_file,):
        out = os.path.join(tmp, "copy.safetensors")
        tool("copy", src, out)
        check(open(out, "rb").read() == open(src, "rb").read(),
              f"d9d's rewrite of {os.path.basename(src)} is byte-identical to the reference's file")
    single_meta = os.path.join(tmp, "py1.safetensors")
    stnp.save_file(tensors, single_meta, metadata={"format": "pt"})
    out = os.path.join(tmp, "copy1.safetensors")
    tool("copy", single_meta, out)
    check(open(out, "rb").read() == open(single_meta, "rb").read(),
          "d9d's rewrite of a numpy-dtype file is byte-identical to the reference's file")
    no_meta = os.path.join(tmp, "py0.safetensors")
    stnp.save_file(tensors, no_meta)
    out = os.path.join(tmp, "copy0.safetensors")
    tool("copy", no_meta, out)
    check(open(out, "rb").read() == open(no_meta, "rb").read(),
          "without metadata too, the rewrite is byte-identical")

    # ---- 2. d9d writes, Python reads ---------------------------------------------------------
    for align in ("8", "4096"):
        out = os.path.join(tmp, f"d9d-{align}.safetensors")
        tool("copy", py_file, out, align)
        raw_bytes = open(out, "rb").read()
        n = int.from_bytes(raw_bytes[:8], "little")
        check((8 + n) % int(align) == 0, f"data section aligned to {align}")
        loaded = stnp.load_file(out)
        check(set(loaded) == set(tensors), f"names ({align})")
        for k, v in tensors.items():
            check(loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, f"{k} info ({align})")
            check(loaded[k].tobytes() == v.tobytes(), f"{k} bytes ({align})")
        with safetensors.safe_open(out, framework="np") as f:
            check(f.metadata() == meta, f"metadata ({align})")
    out = os.path.join(tmp, "d9d-raw.safetensors")
    tool("copy", raw_file, out, "4096")
    des = dict(safetensors.deserialize(open(out, "rb").read()))
    for k, spec in raw.items():
        check(des[k]["dtype"] == spec["dtype"] and list(des[k]["shape"]) == spec["shape"], f"{k} raw info")
        check(bytes(des[k]["data"]) == spec["data"], f"{k} raw bytes")
    # Strided sources: d9d writes transpose(0, 1) views straight from the mapping.
    mats = {"a": rng.standard_normal((37, 53)).astype(np.float32),
            "b": rng.integers(0, 1 << 15, (8, 3, 5), dtype=np.int16),
            "c": np.arange(10, dtype=np.float64)}
    src = os.path.join(tmp, "mats.safetensors")
    stnp.save_file(mats, src)
    out = os.path.join(tmp, "mats-t.safetensors")
    tool("transpose", src, out)
    loaded = stnp.load_file(out)
    for k, v in mats.items():
        want = np.swapaxes(v, 0, 1) if v.ndim >= 2 else v
        check(loaded[k].shape == want.shape and np.array_equal(loaded[k], want),
              f"transposed {k} written element-exact")

    # ---- 3. huggingface_hub's sharding -------------------------------------------------------
    state = {f"model.layers.{i}.{p}": rng.standard_normal((64, 32)).astype(np.float32)
             for i in range(6) for p in ("q.weight", "k.weight", "v.weight")}
    state["lm_head.weight"] = rng.standard_normal((100, 32)).astype(np.float16)
    # The hub's own splitter (the one its torch helper wraps), fed numpy's sizes.
    split = split_state_dict_into_shards_factory(
        state, get_storage_size=lambda a: a.nbytes,
        filename_pattern="model{suffix}.safetensors", max_shard_size=20_000)
    check(split.is_sharded, "the hub split the state into several shards")
    ckpt = os.path.join(tmp, "ckpt")
    os.makedirs(ckpt)
    for filename, names in split.filename_to_tensors.items():
        stnp.save_file({k: state[k] for k in names}, os.path.join(ckpt, filename),
                       metadata={"format": "pt"})
    with open(os.path.join(ckpt, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, fh, indent=2)
    d = json.loads(tool("ckpt", ckpt))
    check(sorted(t["name"] for t in d["tensors"]) == sorted(state), "every sharded tensor listed")
    for t in d["tensors"]:
        check(t["file"] == split.tensor_to_filename[t["name"]], f"{t['name']} in its shard")
        check(bytes.fromhex(t["hex"]) == state[t["name"]].tobytes(), f"{t['name']} bytes (sharded)")

finish("interop")
