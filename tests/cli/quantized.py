#!/usr/bin/env python3
"""Quantized checkpoints from the shell: inspect and plan show each quantized weight as one logical
weight; convert dequantizes (examples/specs/deepseek_fp8_to_bf16.json, numpy + ml_dtypes as the
oracle) and writes config.json without its quantization_config; a fused packed layout
(examples/specs/fp8_llama_hf_to_fused.json) goes back bit-exactly with --reverse; conversions that
would separate a weight from its scale, or fuse across a block, fail before any byte is read,
naming the tensors; gpt-oss's MXFP4 experts dequantize.

usage: quantized.py D9D SPECS_DIR
"""
import json
import os
import struct
import tempfile

import ml_dtypes
import numpy as np

from clitest import (BF16, check, d9d, d9d_ok, expect_failure, finish, load_checkpoint,
                     nothing_partial, spec)

RNG = np.random.default_rng(20261202)
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
NAMES = {np.dtype(np.float32): "F32", BF16: "BF16", E4M3: "F8_E4M3", np.dtype(np.uint8): "U8"}
CONFIG = {"architectures": ["DeepseekV3ForCausalLM"], "hidden_size": 300,
          "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                                  "quant_method": "fp8", "weight_block_size": [128, 128]}}


def save(state, path):
    """One safetensors file, written here: Python's safetensors has no numpy FP8."""
    header, offset = {}, 0
    for name in sorted(state):
        a = np.ascontiguousarray(state[name])
        header[name] = {"dtype": NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name in sorted(state):
            f.write(np.ascontiguousarray(state[name]).tobytes())


def read_raw(ckpt):
    """name -> (dtype name, shape, bytes) of every tensor in a checkpoint directory, read here."""
    out = {}
    for name in sorted(os.listdir(ckpt)):
        if not name.endswith(".safetensors"):
            continue
        with open(os.path.join(ckpt, name), "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            data = f.read()
        out.update({k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
                    for k, v in header.items() if k != "__metadata__"})
    return out


def fp8_llama(rows=None):
    """An FP8 Llama-shaped state (Qwen3-FP8 naming): 2 layers, hidden 300 (ragged blocks)."""
    rows = rows or {"q": 256, "k": 128, "v": 128}
    s = {}

    def quantized(name, r, c):
        s[name] = RNG.integers(0, 256, size=(r, c), dtype=np.uint8).view(E4M3)
        s[name][(s[name].view(np.uint8) & 0x7F) == 0x7F] = 0  # no NaN codes
        s[name + "_scale_inv"] = (RNG.uniform(0.5, 2, size=(-(-r // 128), -(-c // 128))) *
                                  2.0 ** RNG.integers(-12, -4)).astype(np.float32)

    for i in range(2):
        p = f"model.layers.{i}."
        for proj in ("q", "k", "v"):
            quantized(p + f"self_attn.{proj}_proj.weight", rows[proj], 300)
        quantized(p + "self_attn.o_proj.weight", 300, 256)
        quantized(p + "mlp.gate_proj.weight", 384, 300)
        quantized(p + "mlp.up_proj.weight", 384, 300)
        quantized(p + "mlp.down_proj.weight", 300, 384)
        s[p + "input_layernorm.weight"] = RNG.standard_normal(300).astype(BF16)
        s[p + "post_attention_layernorm.weight"] = RNG.standard_normal(300).astype(BF16)
    s["model.embed_tokens.weight"] = RNG.standard_normal((64, 300)).astype(BF16)
    s["model.norm.weight"] = RNG.standard_normal(300).astype(BF16)
    s["lm_head.weight"] = RNG.standard_normal((64, 300)).astype(BF16)
    return s


def make(tmp, name, state, config=CONFIG):
    ckpt = os.path.join(tmp, name)
    os.makedirs(ckpt)
    save(state, os.path.join(ckpt, "model.safetensors"))
    if config is not None:
        with open(os.path.join(ckpt, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    return ckpt


def dequantized(w, s):
    """The oracle: f32(W) * s[i // 128, j // 128], rounded once to BF16."""
    full = np.repeat(np.repeat(s, 128, 0), 128, 1)[:w.shape[0], :w.shape[1]]
    return (w.astype(np.float32) * full).astype(BF16)


def test_inspect_and_plan(tmp, state, ckpt):
    r = d9d_ok("inspect", ckpt)
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.startswith("model.")}
    check(rows.get("model.layers.0.self_attn.q_proj.weight", [None] * 2)[1] == "fp8_block",
          f"inspect: a quantized weight is one row with its format: {r.stdout[:400]}")
    check("model.layers.0.self_attn.q_proj.weight_scale_inv" not in rows,
          "inspect: its scale is folded into it")
    check("fp8_block [128, 128] 14" in r.stdout and "quant_method fp8" in r.stdout,
          f"inspect: the count and config.json's method: {r.stdout[-400:]}")
    j = json.loads(d9d_ok("inspect", ckpt, "--json").stdout)
    q = {p["weight"]: p for p in j["quantized"]}
    check(len(q) == 14 and q["model.layers.1.mlp.down_proj.weight"]["logical_shape"] == [300, 384],
          f"inspect --json: the quantized weights with their logical shapes: {list(q)[:3]}")
    check(len(j["tensors"]) == len(state), "inspect --json still lists every tensor")

    r = d9d_ok("plan", ckpt, "--spec", spec("deepseek_fp8_to_bf16.json"))
    check("quantized:  14 weights, fp8_block [128, 128] 14 (config.json: quant_method fp8)" in r.stdout,
          f"plan: the quantized inputs: {r.stdout[:600]}")
    line = next((l for l in r.stdout.splitlines() if "model.layers.0.mlp.gate_proj.weight " in l), "")
    check("BF16" in line and "[384, 300]" in line and "weight_scale_inv" in line,
          f"plan: the dequantized output, its logical shape, read from the weight and its scale: {line}")
    j = json.loads(d9d_ok("plan", ckpt, "--spec", spec("deepseek_fp8_to_bf16.json"), "--json").stdout)
    check(j["ok"] and len(j["quantized_inputs"]) == 14 and not j["quantized_outputs"],
          "plan --json: 14 quantized inputs, none left in the output")
    bf16_bytes = sum(w.size * 2 for k, w in state.items() if w.dtype == E4M3)
    other = sum(a.nbytes for k, a in state.items() if a.dtype == BF16)
    check(j["output_bytes"] == bf16_bytes + other, "plan --json: the output bytes of the BF16 weights")

    r = d9d_ok("plan", ckpt, "--spec", spec("fp8_llama_hf_to_fused.json"))
    line = next((l for l in r.stdout.splitlines() if "layers.0.attn.qkv.weight " in l), "")
    check("fp8_block" in line and "[512, 300]" in line,
          f"plan: a fused weight kept packed shows as one logical weight: {line}")
    check("layers.0.attn.qkv.weight_scale_inv" not in r.stdout.split("shards")[0],
          "plan: its scale is folded into it")


def test_dequantize(tmp, state, ckpt):
    out = os.path.join(tmp, "bf16")
    r = d9d_ok("convert", ckpt, out, "--spec", spec("deepseek_fp8_to_bf16.json"), "--no-progress")
    check("quantization_config removed" in r.stderr, f"convert says what it did to config.json: {r.stderr}")
    got = load_checkpoint(out)
    want_keys = {k for k in state if not k.endswith("_scale_inv")}
    check(set(got) == want_keys, f"dequantized: every weight, no scale ({sorted(set(got) ^ want_keys)[:4]})")
    bad = [k for k in want_keys if state[k].dtype == E4M3 and not np.array_equal(
        got[k].view(np.uint16), dequantized(state[k], state[k + "_scale_inv"]).view(np.uint16))]
    check(not bad, f"dequantized bit for bit as the oracle: {bad[:3]}")
    check(all(np.array_equal(got[k].view(np.uint16), state[k].view(np.uint16))
              for k in want_keys if state[k].dtype == BF16), "the other tensors are kept")
    config = json.load(open(os.path.join(out, "config.json")))
    want = dict(CONFIG)
    del want["quantization_config"]
    check(config == want, f"config.json without its quantization_config: {config}")
    expect_failure("--reverse of a dequantization", ["convert", out, os.path.join(tmp, "back"),
                                                     "--reverse", "--no-progress"],
                   ["cannot be undone", "d9d does not quantize"], out=os.path.join(tmp, "back"))
    # Only some weights: the rest stay quantized, and config.json lists the dequantized modules.
    partial = os.path.join(tmp, "partial.json")
    with open(partial, "w") as f:
        json.dump({"d9d_mapper_spec": 1, "rules": [
            {"op": "dequantize", "format": "fp8_block", "source": "{m...}.o_proj.weight",
             "scale": "{m...}.o_proj.weight_scale_inv", "dtype": "BF16"}]}, f)
    out2 = os.path.join(tmp, "partial")
    d9d_ok("convert", ckpt, out2, "--spec", partial, "--no-progress")
    q = json.load(open(os.path.join(out2, "config.json")))["quantization_config"]
    check(q.get("modules_to_not_convert") == ["model.layers.0.self_attn.o_proj",
                                              "model.layers.1.self_attn.o_proj"],
          f"config.json: the dequantized modules are not to be converted: {q}")


def test_packed_round_trip(tmp, state, ckpt):
    fused = os.path.join(tmp, "fused")
    d9d_ok("convert", ckpt, fused, "--spec", spec("fp8_llama_hf_to_fused.json"), "--no-progress")
    raw = read_raw(fused)
    check(raw["layers.0.attn.qkv.weight"][:2] == ("F8_E4M3", [512, 300]) and
          raw["layers.0.attn.qkv.weight_scale_inv"][:2] == ("F32", [4, 3]),
          "fused: the packed weight and its fused scale")
    check(json.load(open(os.path.join(fused, "config.json"))) == CONFIG,
          "fused: config.json copied as it was (the weights are still quantized)")
    back = os.path.join(tmp, "back")
    d9d_ok("convert", fused, back, "--reverse", "--no-progress")
    r = d9d("verify", ckpt, back)
    check(r.returncode == 0, f"packed through a fused layout and back, bit for bit: {r.stdout[-300:]}")


def test_refusals(tmp, state, ckpt):
    def spec_file(name, body):
        path = os.path.join(tmp, name)
        with open(path, "w") as f:
            json.dump(body, f)
        return path

    out = os.path.join(tmp, "refused")
    renamed = spec_file("rename.json", {"d9d_mapper_spec": 1, "rules": [
        {"op": "rename_tensor", "source": "{m...}.q_proj.weight", "target": "{m...}.q.weight"}]})
    for cmd in (["plan", ckpt, "--spec", renamed], ["convert", ckpt, out, "--spec", renamed]):
        expect_failure(f"{cmd[0]}: a weight renamed without its scale", cmd,
                       ["'model.layers.0.self_attn.q_proj.weight' and its scale "
                        "'model.layers.0.self_attn.q_proj.weight_scale_inv'", "separate groups"],
                       out=out)
    cast = spec_file("cast.json", {"d9d_mapper_spec": 1, "unmatched": "drop", "rules": [
        {"op": "cast", "source": "{m...}.weight", "dtype": "BF16"}]})
    expect_failure("a weight read without its scale", ["convert", ckpt, out, "--spec", cast],
                   ["the weight without its scale", "'model.layers.0.mlp.down_proj.weight'"], out=out)
    # A fusion across a block: v first, 100 rows.
    ragged = make(tmp, "ragged", fp8_llama({"q": 256, "k": 128, "v": 100}))
    swapped = spec_file("swapped.json", {"d9d_mapper_spec": 1, "unmatched": "keep",
        "quantization": {"format": "fp8_block", "weight_suffix": ".weight",
                         "scale_suffix": ".weight_scale_inv"},
        "rules": [{"op": "concatenate_tensors", "target": "layers.{L}.vq.weight", "sources": [
            "model.layers.{L}.self_attn.v_proj.weight", "model.layers.{L}.self_attn.q_proj.weight"]}]})
    expect_failure("a fusion that splits a block", ["plan", ragged, "--spec", swapped],
                   ["'model.layers.0.self_attn.v_proj.weight' has 100", "multiple of the block's 128"])
    expect_failure("the same at convert, before any byte", ["convert", ragged, out, "--spec", swapped],
                   ["has 100"], out=out)
    # A scale whose shape does not fit its weight (floor instead of ceil).
    bad = fp8_llama()
    bad["model.layers.0.self_attn.o_proj.weight_scale_inv"] = np.ones((2, 2), np.float32)
    bad_ckpt = make(tmp, "bad", bad)
    expect_failure("a scale that does not fit", ["convert", bad_ckpt, out, "--spec",
                                                 spec("deepseek_fp8_to_bf16.json")],
                   ["'model.layers.0.self_attn.o_proj.weight_scale_inv'", "expected [3, 2]"], out=out)


def test_mxfp4_experts(tmp):
    e, rows, groups = 4, 48, 3
    blocks = RNG.integers(0, 256, size=(e, rows, groups, 16), dtype=np.uint8)
    scales = RNG.integers(110, 140, size=(e, rows, groups), dtype=np.uint8)
    state = {"model.layers.0.mlp.experts.down_proj_blocks": blocks,
             "model.layers.0.mlp.experts.down_proj_scales": scales}
    ckpt = make(tmp, "oss", state, {"quantization_config": {"quant_method": "mxfp4"}})
    r = d9d_ok("inspect", ckpt)
    check("mxfp4" in r.stdout and f"[{e}, {rows}, {groups * 32}]" in r.stdout,
          f"inspect: the experts as one mxfp4 weight [E, R, G*32]: {r.stdout}")
    body = {"d9d_mapper_spec": 1, "rules": [
        {"op": "dequantize", "format": "mxfp4", "source": "{m...}.{p}_blocks",
         "scale": "{m...}.{p}_scales", "target": "{m...}.{p}", "dtype": "BF16"}]}
    path = os.path.join(tmp, "oss.json")
    with open(path, "w") as f:
        json.dump(body, f)
    out = os.path.join(tmp, "oss-bf16")
    d9d_ok("convert", ckpt, out, "--spec", path, "--no-progress")
    got = load_checkpoint(out)["model.layers.0.mlp.experts.down_proj"]
    fp4 = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    values = np.stack([fp4[blocks & 15], fp4[blocks >> 4]], -1).reshape(e, rows, groups, 32)
    scale = scales.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)[..., None]
    want = (values * scale).reshape(e, rows, groups * 32).astype(BF16)
    check(np.array_equal(got.view(np.uint16), want.view(np.uint16)),
          "gpt-oss experts dequantized as the oracle (low nibble first, 2^(s - 127))")
    check(not os.path.exists(os.path.join(out, "config.json")) or
          "quantization_config" not in json.load(open(os.path.join(out, "config.json"))),
          "config.json without its quantization_config")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        state = fp8_llama()
        ckpt = make(tmp, "fp8", state)
        test_inspect_and_plan(tmp, state, ckpt)
        test_dequantize(tmp, state, ckpt)
        test_packed_round_trip(tmp, state, ckpt)
        test_refusals(tmp, state, ckpt)
        test_mxfp4_experts(tmp)
    finish("cli_quantized")


if __name__ == "__main__":
    main()
