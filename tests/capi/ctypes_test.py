#!/usr/bin/env python3
"""python/d9d_ctypes.py (ctypes over the C ABI, numpy through DLPack) against Python safetensors.

  python3 ctypes_test.py LIBD9D PYTHON_DIR D9D_CLI SPECS_DIR

1. Every dtype numpy holds (bool, u8..u64, i8..i64, f16, f32, f64, c64; matrices, scalars, empty
   tensors) and BF16 (ml_dtypes) load equal to safetensors.numpy.load_file: names, dtypes, shapes,
   bytes. F8 (E4M3, E5M2) from a hand-written file equal their bytes as ml_dtypes arrays; F4 is a
   TypeError naming the tensor.
2. A huggingface_hub-sharded Llama through examples/specs/llama_hf_to_fused.json: every fused qkv
   and gate_up equals numpy's concatenation of its parts.
3. Lifetimes: arrays stay valid after their stream (and its checkpoint) is closed; once they are
   gone no mapping of the checkpoint is left (every deleter ran: the versioned capsule numpy took,
   the legacy one, one no consumer took, a tensor never exported); loading new-memory outputs 40
   times does not grow the resident set.
4. Errors: a bad spec, bad options and a missing file raise d9d_ctypes.Error with the C code.
5. d9d_convert (through ctypes) writes byte for byte what `d9d convert` writes.
"""
import ctypes
import gc
import json
import os
import struct
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np
import safetensors.numpy as stnp
from huggingface_hub import split_state_dict_into_shards_factory

LIB, PYTHON_DIR, D9D, SPECS = (os.path.abspath(a) for a in sys.argv[1:5])
sys.path.insert(0, PYTHON_DIR)
import d9d_ctypes  # noqa: E402

failures = []
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)
    return cond


def load(path, spec=None, options=None):
    return d9d_ctypes.load(path, spec, options, library_path=LIB)


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def mappings_of(path):
    with open("/proc/self/maps") as f:
        return [line for line in f if path in line]


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def raw_safetensors(path, tensors):
    """A safetensors file from (name, dtype name, shape, bytes), for dtypes numpy cannot write."""
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


rng = np.random.default_rng(20261202)

with tempfile.TemporaryDirectory() as tmp:
    # ---- 1. every dtype ---------------------------------------------------------------------------
    state = {}
    for dt in (np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64,
               np.int64, np.float16, np.float32, np.float64, np.complex64, ml_dtypes.bfloat16):
        dt = np.dtype(dt)
        raw = rng.integers(0, 256, size=(3, 5, dt.itemsize), dtype=np.uint8)
        a = (raw[..., 0] & 1).astype(bool) if dt == np.bool_ else raw.view(dt).reshape(3, 5)
        state[f"{dt.name}.matrix"] = np.ascontiguousarray(a)
        state[f"{dt.name}.scalar"] = np.ascontiguousarray(a[0, 0])
        state[f"{dt.name}.empty"] = np.zeros((0, 4), dt)
    dtypes_file = os.path.join(tmp, "dtypes.safetensors")
    stnp.save_file(state, dtypes_file, metadata={"format": "np"})
    expected = stnp.load_file(dtypes_file)
    got = load(dtypes_file)
    check(sorted(got) == sorted(expected), f"the same names: {sorted(set(got) ^ set(expected))}")
    for name, want in expected.items():
        a = got.get(name)
        check(a is not None and same(a, want),
              f"{name}: {None if a is None else (a.dtype, a.shape)} vs {(want.dtype, want.shape)}")
        check(a is None or not a.flags.writeable, f"{name} views the mapped file: read-only")
    f8 = rng.integers(0, 256, size=(4, 3), dtype=np.uint8)
    f8_file = os.path.join(tmp, "f8.safetensors")
    raw_safetensors(f8_file, [("e4m3", "F8_E4M3", (4, 3), f8.tobytes()),
                              ("e5m2", "F8_E5M2", (4, 3), f8.tobytes())])
    got = load(f8_file)
    check(same(got["e4m3"], f8.view(ml_dtypes.float8_e4m3fn)), "F8_E4M3 as ml_dtypes.float8_e4m3fn")
    check(same(got["e5m2"], f8.view(ml_dtypes.float8_e5m2)), "F8_E5M2 as ml_dtypes.float8_e5m2")
    f4_file = os.path.join(tmp, "f4.safetensors")
    raw_safetensors(f4_file, [("packed", "F4", (4, 2), bytes(4))])
    try:
        load(f4_file)
        check(False, "F4 cannot be a numpy array")
    except TypeError as e:
        check("packed" in str(e) and "4-bit" in str(e), f"F4: {e}")
    del got, a
    gc.collect()
    check(not mappings_of(tmp), f"no mapping left after the dtype arrays are gone: {mappings_of(tmp)}")

    # ---- 2. through the fused spec, sharded -------------------------------------------------------
    hidden, inter, layers = 256, 704, 4
    llama = {"model.embed_tokens.weight": rng.standard_normal((512, hidden), np.float32),
             "model.norm.weight": rng.standard_normal(hidden, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj.weight", (hidden, hidden)),
                            ("self_attn.k_proj.weight", (hidden // 4, hidden)),
                            ("self_attn.v_proj.weight", (hidden // 4, hidden)),
                            ("self_attn.o_proj.weight", (hidden, hidden)),
                            ("mlp.gate_proj.weight", (inter, hidden)),
                            ("mlp.up_proj.weight", (inter, hidden)),
                            ("mlp.down_proj.weight", (hidden, inter)),
                            ("input_layernorm.weight", (hidden,)),
                            ("post_attention_layernorm.weight", (hidden,))):
            llama[p + name] = rng.standard_normal(shape, np.float32).astype(ml_dtypes.bfloat16)
    ckpt = os.path.join(tmp, "llama")
    os.makedirs(ckpt)
    split = split_state_dict_into_shards_factory(
        llama, get_storage_size=lambda a: a.nbytes, filename_pattern="model{suffix}.safetensors",
        max_shard_size=1_000_000)
    for filename, names in split.filename_to_tensors.items():
        stnp.save_file({k: llama[k] for k in names}, os.path.join(ckpt, filename), metadata={"format": "pt"})
    with open(os.path.join(ckpt, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, f)
    check(len(split.filename_to_tensors) > 3, f"{len(split.filename_to_tensors)} shards")
    spec_path = os.path.join(SPECS, "llama_hf_to_fused.json")
    spec = open(spec_path).read()
    fused = load(ckpt, spec, {"memory_budget": "1MiB", "threads": 2})
    check(len(fused) == 2 + 6 * layers, f"{len(fused)} fused outputs")
    for i in range(layers):
        p = f"model.layers.{i}."
        qkv = np.concatenate([llama[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        gate_up = np.concatenate([llama[p + "mlp.gate_proj.weight"], llama[p + "mlp.up_proj.weight"]])
        check(same(fused[f"layers.{i}.attn.qkv.weight"], qkv), f"layer {i} qkv")
        check(same(fused[f"layers.{i}.mlp.gate_up.weight"], gate_up), f"layer {i} gate_up")
        check(fused[f"layers.{i}.attn.qkv.weight"].flags.writeable, "a concatenation is new, writable memory")
        check(same(fused[f"layers.{i}.attn.out.weight"], llama[p + "self_attn.o_proj.weight"]), f"layer {i} out")
    check(same(fused["embed.weight"], llama["model.embed_tokens.weight"]), "embed renamed")

    # ---- 3. lifetimes -----------------------------------------------------------------------------
    # The stream (and the checkpoint it opened) closed when load() returned; the arrays still read.
    gc.collect()
    check(same(fused["norm.weight"], llama["model.norm.weight"]), "norm after the stream closed")
    stream = d9d_ctypes.stream(ckpt, library_path=LIB)
    first_name, first = next(stream)
    stream.close()  # d9d_stream_close before the end
    check(same(first, llama[first_name]), f"{first_name} after d9d_stream_close mid-stream")
    del fused, first, stream
    gc.collect()
    check(not mappings_of(ckpt), "no mapping left once the arrays are gone (every deleter ran)")

    lib = d9d_ctypes.library(LIB)

    def next_tensor(handle):
        name, out = ctypes.c_char_p(), ctypes.POINTER(d9d_ctypes.DLManagedTensorVersioned)()
        check(lib.d9d_stream_next(handle, ctypes.byref(name), ctypes.byref(out)) == 1, "stream_next")
        return name.value.decode(), out.contents

    class Legacy:  # a consumer of DLPack before 1.0 (numpy 1.x) asks with no max_version
        def __init__(self, exported):
            self.exported = exported

        def __dlpack__(self, stream=None):
            return self.exported.__dlpack__(stream=stream)

        def __dlpack_device__(self):
            return self.exported.__dlpack_device__()

    handle = ctypes.c_void_p()
    check(lib.d9d_stream_open(dtypes_file.encode(), None, None, ctypes.byref(handle)) == 0, "stream_open")
    name, managed = next_tensor(handle)
    exported = d9d_ctypes._Exported(lib, managed)
    legacy = np.from_dlpack(Legacy(exported))
    exported.release_unconsumed()
    check(same(legacy, expected[name]), f"{name} through a legacy capsule")
    name, managed = next_tensor(handle)
    exported = d9d_ctypes._Exported(lib, managed)
    capsule = exported.__dlpack__(max_version=(1, 0))
    del capsule
    exported.release_unconsumed()  # a capsule no consumer took
    name, managed = next_tensor(handle)
    d9d_ctypes._Exported(lib, managed).release_unconsumed()  # never exported
    lib.d9d_stream_close(handle)
    check(len(mappings_of(dtypes_file)) > 0, "the legacy array holds its mapping")
    del legacy
    gc.collect()
    check(not mappings_of(dtypes_file), f"legacy, unconsumed and unexported tensors all released: {mappings_of(dtypes_file)}")

    load(ckpt, spec)  # warm up the allocator
    before = rss_mb()
    for _ in range(40):
        arrays = load(ckpt, spec)
        del arrays
    growth = rss_mb() - before
    check(growth < 16, f"40 loads of {sum(a.nbytes for a in llama.values()) / 1e6:.1f} MB of new "
                       f"outputs grew the resident set by {growth:.1f} MB")

    # ---- 4. errors --------------------------------------------------------------------------------
    def error_of(*args):
        try:
            load(*args)
        except d9d_ctypes.Error as e:
            return e.code, str(e)
        return 0, ""

    code, message = error_of(ckpt, '{"d9d_mapper_spec": 1, "rules": [{"op": "nope"}]}')
    check(code == -4 and "spec_json" in message and "$.rules[0]" in message, f"bad spec: {code} {message}")
    code, message = error_of(ckpt, None, {"memory_budget": "lots"})
    check(code == -1 and '"memory_budget"' in message, f"bad options: {code} {message}")
    code, message = error_of(os.path.join(tmp, "nothing-here"))
    check(code == -3 and "nothing-here" in message, f"missing checkpoint: {code} {message}")

    # ---- 5. d9d_convert writes what `d9d convert` writes -------------------------------------------
    by_cli, by_c = os.path.join(tmp, "by-cli"), os.path.join(tmp, "by-c")
    subprocess.run([D9D, "convert", ckpt, by_cli, "--spec", spec_path, "--shard-size", "1MB",
                    "--no-progress", "--no-fsync"], check=True, capture_output=True)
    lib.d9d_convert.argtypes = [ctypes.c_char_p] * 4
    status = lib.d9d_convert(ckpt.encode(), by_c.encode(), spec.encode(),
                             b'{"shard_size": "1MB", "fsync": false}')
    check(status == 0, f"d9d_convert: {status} {lib.d9d_last_error().decode()}")
    check(sorted(os.listdir(by_cli)) == sorted(os.listdir(by_c)), f"the same files: {os.listdir(by_c)}")
    for f in sorted(os.listdir(by_cli)):
        a, b = (open(os.path.join(d, f), "rb").read() for d in (by_cli, by_c))
        if f == "d9d-conversion.json":
            a, b = json.loads(a), json.loads(b)
            check((a.pop("spec_origin"), b.pop("spec_origin")) == (spec_path, "spec_json"), "spec origins")
        check(a == b, f"{f} is the same")

print(f"ctypes_test: {checks - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
