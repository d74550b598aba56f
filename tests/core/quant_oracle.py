#!/usr/bin/env python3
"""Differential test of d9d::dequantize against numpy + ml_dtypes, for every format.

usage: quant_oracle.py QUANT_TOOL

The oracle is written from the formats' own definitions, sharing no code with d9d:
  - element values from ml_dtypes: float8_e4m3fn (FP8 weights, nvfp4 block scales), float4_e2m1fn
    (FP4 codes), float8_e8m0fnu (MX scales: 2^(code - 127), 0xFF NaN);
  - FP4 packing: two codes a byte, element 2k in the low nibble (transformers' mxfp4.py
    convert_moe_packed_tensors: sub[:, 0::2] = lut[blk & 0x0F]; compressed-tensors
    unpack_fp4_from_uint8; ModelOpt NVFP4QTensor: unpacked[..., 0::2] = input & 0x0F);
  - fp8_block: f32(W) * s[i // br, j // bc], ceil-sized scales with partial edge blocks
    (DeepSeek-V3 inference/kernel.py weight_dequant_kernel: the scale grid is cdiv(M, BLOCK) x
    cdiv(N, BLOCK) and edge blocks are masked);
  - fp8_channel: f32(W) * s[i] (or one s), compressed-tensors;
  - mxfp4: fp4 * 2^(s - 127) in F32 (OCP MX: a NaN scale makes the block NaN);
  - nvfp4: fp4 * (f32(s) * g) (ModelOpt NVFP4QTensor.dequantize: per_block_scale = scale * double
    scale, then the unpacked weights times it) or fp4 * (f32(s) / g) (compressed-tensors
    _dequantize: scale = scale / global_scale, then x_q * scale);
  - all in F32 (numpy float32 arithmetic rounds to nearest even), then one rounding to the output
    dtype (numpy float16, ml_dtypes bfloat16); a NaN result is the canonical NaN, so d9d's bytes
    are compared exactly, NaNs included.
Inputs cover every FP8 and FP4 code, NaN and subnormal codes, scales over their whole exponent
range (F32 scales from 2^-149 to 2^127, infinities, NaN, zero, negatives; every E8M0 code 0..254
and 255 = NaN; every E4M3 scale code), extreme global scales, and ragged ceil edges (dims that are
not multiples of the block). Then the rules: scales that do not fit their weight are refused with
both shapes named.
"""
import os
import subprocess
import sys
import tempfile
import warnings

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from oracle import check, finish  # noqa: E402

warnings.simplefilter("ignore")  # overflow and inf * 0 are cases here, not accidents

RNG = np.random.default_rng(20261202)
OUT = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32}
CANONICAL_NAN = {"BF16": 0x7FC0, "F16": 0x7E00, "F32": 0x7FC00000}
BITS = {"BF16": np.uint16, "F16": np.uint16, "F32": np.uint32}
WIDE = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16}

FP4 = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32)


def e4m3(codes):
    return codes.astype(np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)


def e8m0(codes):
    return codes.astype(np.uint8).view(ml_dtypes.float8_e8m0fnu).astype(np.float32)


def unpack_fp4(packed):
    """[..., K] bytes -> [..., 2K] F32 values, element 2k from the low nibble."""
    lo = FP4[packed & 0x0F]
    hi = FP4[packed >> 4]
    return np.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def expand(scale, axis, block, size):
    """Repeats each scale `block` times along `axis`, cut to `size` (partial edge blocks)."""
    return np.repeat(scale, block, axis=axis).take(np.arange(size), axis=axis)


def rounded(values, dtype):
    out = values.astype(np.float32).astype(OUT[dtype])
    bits = out.view(BITS[dtype]).copy()
    bits[np.isnan(values)] = CANONICAL_NAN[dtype]
    return bits


def wide_scales(n, dtype):
    """Scales of a float dtype over its whole exponent range, specials included."""
    if dtype == "F32":
        exps = RNG.integers(-149, 128, size=n)
        v = (RNG.uniform(1, 2, size=n) * np.exp2(exps.astype(np.float64))).astype(np.float32)
        v[np.isinf(v)] = np.float32(3.4e38)
    else:
        t = WIDE[dtype]
        v = RNG.integers(0, 2**16, size=n, dtype=np.uint16).view(t).astype(np.float32)
    v *= np.where(RNG.random(n) < 0.2, -1, 1).astype(np.float32)
    tiny, huge = (2**-149, 2**127) if dtype == "F32" else (0.5, 2.0)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, tiny, huge], dtype=np.float32)
    k = min(n, specials.size)
    v[:k] = specials[:k]
    RNG.shuffle(v)
    return v.astype(WIDE[dtype])


class Run:
    def __init__(self, tool, tmp):
        self.tool, self.tmp, self.count = tool, tmp, 0

    def file(self, arr):
        self.count += 1
        path = os.path.join(self.tmp, f"a{self.count}")
        np.ascontiguousarray(arr).tofile(path)
        return path

    def arg(self, dtype, arr):
        return f"{dtype}:{','.join(str(d) for d in arr.shape)}:{self.file(arr)}"

    def call(self, fmt, out, block, mode, source, scale, glob=None):
        """source, scale, glob: (dtype name, array). Returns (exit status, stderr, result path)."""
        out_path = os.path.join(self.tmp, "out")
        args = [self.tool, fmt, out, block, mode, self.arg(*source), self.arg(*scale)]
        if glob is not None:
            args.append(self.arg(*glob))
        args.append(out_path)
        p = subprocess.run(args, capture_output=True, text=True)
        return p.returncode, p.stderr, out_path

    def compare(self, what, fmt, out, block, mode, source, scale, glob, want_values):
        code, err, path = self.call(fmt, out, block, mode, source, scale, glob)
        if not check(code == 0, lambda: f"{what}: quant_tool failed: {err.strip()}"):
            return
        got = np.fromfile(path, dtype=BITS[out])
        want = rounded(want_values, out).reshape(-1)
        if not check(got.size == want.size, f"{what}: {got.size} elements, expected {want.size}"):
            return
        bad = np.nonzero(got != want)[0]
        check(bad.size == 0, lambda: f"{what}: {bad.size} of {want.size} elements differ, first at "
              f"{bad[0]}: d9d {got[bad[0]]:#x}, oracle {want[bad[0]]:#x} "
              f"(value {want_values.reshape(-1)[bad[0]]!r})")

    def refuse(self, what, fmt, out, block, mode, source, scale, glob, *needles):
        code, err, _ = self.call(fmt, out, block, mode, source, scale, glob)
        check(code == 1 and all(n in err for n in needles),
              lambda: f"{what}: expected a refusal naming {needles}, got exit {code}: "
              f"{err.strip()}")


def fp8_codes(shape):
    """Random FP8 codes in which every code appears (NaNs 0x7F, 0xFF and subnormals included)."""
    n = int(np.prod(shape))
    c = RNG.integers(0, 256, size=n, dtype=np.uint8)
    c[: min(n, 256)] = np.arange(min(n, 256), dtype=np.uint8)
    RNG.shuffle(c)
    return c.reshape(shape)


def test_fp8_block(run):
    cases = [((300, 517), (128, 128)), ((128, 256), (128, 128)), ((3, 130, 70), (64, 32)),
             ((5, 7), (2, 3)), ((1, 1), (128, 128)), ((2, 17, 33), (16, 16))]
    for shape, (br, bc) in cases:
        w = fp8_codes(shape)
        *lead, r, c = shape
        sshape = (*lead, -(-r // br), -(-c // bc))
        for sdt in ("F32", "BF16", "F16"):
            s = wide_scales(int(np.prod(sshape)), sdt).reshape(sshape)
            full = expand(expand(s.astype(np.float32), -2, br, r), -1, bc, c)
            want = e4m3(w) * full
            for out in ("BF16", "F16", "F32"):
                run.compare(f"fp8_block {shape} block {br}x{bc} scale {sdt} -> {out}", "fp8_block",
                            out, f"{br},{bc}", "-", ("F8_E4M3", w), (sdt, s), None, want)
    w = fp8_codes((300, 517))
    run.refuse("fp8_block: floor-sized scales", "fp8_block", "BF16", "128,128", "-",
               ("F8_E4M3", w), ("F32", np.ones((2, 4), np.float32)), None,
               "F32[2, 4]", "F8_E4M3[300, 517]", "expected [3, 5]")
    run.refuse("fp8_block: a scale of the wrong dtype", "fp8_block", "BF16", "128,128", "-",
               ("F8_E4M3", w), ("U8", np.ones((3, 5), np.uint8)), None, "the scale is U8[3, 5]")
    run.refuse("fp8_block: a source that is not FP8", "fp8_block", "BF16", "128,128", "-",
               ("U8", w), ("F32", np.ones((3, 5), np.float32)), None, "the source is U8[300, 517]")
    run.refuse("fp8_block: a global scale", "fp8_block", "BF16", "128,128", "multiply",
               ("F8_E4M3", w), ("F32", np.ones((3, 5), np.float32)),
               ("F32", np.ones((), np.float32)), "only nvfp4 takes a global scale")


def test_fp8_channel(run):
    for shape, sshape in (((300, 517), (300, 1)), ((4, 33, 64), (4, 33, 1)), ((70, 9), (1,)),
                          ((70, 9), ()), ((3, 5, 7), ())):
        w = fp8_codes(shape)
        for sdt in ("F32", "BF16", "F16"):
            s = wide_scales(max(1, int(np.prod(sshape))), sdt).reshape(sshape)
            s32 = s.astype(np.float32)
            want = e4m3(w) * (s32 if len(sshape) > 1 else s32.reshape(()))
            for out in ("BF16", "F16", "F32"):
                run.compare(f"fp8_channel {shape} scale {sdt}{list(sshape)} -> {out}",
                            "fp8_channel", out, "-", "-", ("F8_E4M3", w), (sdt, s), None, want)
    run.refuse("fp8_channel: a 1-D scale of the rows", "fp8_channel", "BF16", "-", "-",
               ("F8_E4M3", fp8_codes((300, 517))), ("F32", np.ones(300, np.float32)), None,
               "F32[300]", "expected [300, 1]")


def fp4_bytes(shape):
    """Random bytes in which every byte (so every pair of FP4 codes) appears."""
    return fp8_codes(shape)


def test_mxfp4(run):
    # gpt-oss: blocks [..., G, 16], scales [..., G]; every E8M0 code, 255 (NaN) included.
    for shape in ((4, 64, 9, 16), (3, 16), (2, 300, 2, 16)):
        blocks = fp4_bytes(shape)
        scales = fp8_codes(shape[:-1])
        values = unpack_fp4(blocks) * e8m0(scales)[..., None]
        want = values.reshape(*shape[:-2], shape[-2] * 32)
        for sdt in ("U8", "F8_E8M0"):
            for out in ("BF16", "F16", "F32"):
                run.compare(f"mxfp4 blocks {shape} scale {sdt} -> {out}", "mxfp4", out, "-", "-",
                            ("U8", blocks), (sdt, scales), None, want)
    # compressed-tensors: packed [..., K], scales [..., ceil(2K / 32)], ragged edges.
    for shape in ((300, 40), (5, 3, 7), (64, 16)):
        packed = fp4_bytes(shape)
        k = shape[-1]
        scales = fp8_codes((*shape[:-1], -(-2 * k // 32)))
        want = unpack_fp4(packed) * expand(e8m0(scales), -1, 32, 2 * k)
        for out in ("BF16", "F32"):
            run.compare(f"mxfp4 packed {shape} -> {out}", "mxfp4", out, "-", "-", ("U8", packed),
                        ("U8", scales), None, want)
    run.refuse("mxfp4: scales of the logical columns", "mxfp4", "BF16", "-", "-",
               ("U8", fp4_bytes((300, 40))), ("U8", np.ones((300, 80), np.uint8)), None,
               "U8[300, 80]", "U8[300, 40]", "expected [300, 3]")
    run.refuse("mxfp4: blocks with floor-sized scales", "mxfp4", "BF16", "-", "-",
               ("U8", fp4_bytes((4, 9, 16))), ("U8", np.ones((4, 8), np.uint8)), None,
               "expected [4, 9]")


def test_nvfp4(run):
    for shape in ((300, 40), (64, 8), (2, 3, 9), (1, 5)):
        packed = fp4_bytes(shape)
        k = shape[-1]
        scales = fp8_codes((*shape[:-1], -(-2 * k // 16)))
        fp4 = unpack_fp4(packed)
        block = expand(e4m3(scales), -1, 16, 2 * k)
        # no global scale
        for out in ("BF16", "F16", "F32"):
            run.compare(f"nvfp4 {shape} no global -> {out}", "nvfp4", out, "-", "-",
                        ("U8", packed), ("F8_E4M3", scales), None, fp4 * block)
        globals_ = [np.float32(1 / 2688), np.float32(2688.0), np.float32(3e-39), np.float32(1e38),
                    np.float32(0.0), np.float32(np.inf), np.float32(np.nan), np.float32(-0.7)]
        for g in globals_:
            for mode in ("multiply", "divide"):
                combined = e4m3(scales) * g if mode == "multiply" else e4m3(scales) / g
                want = fp4 * expand(combined, -1, 16, 2 * k)
                for gshape in ((), (1,)):
                    run.compare(f"nvfp4 {shape} global {g!r}{list(gshape)} {mode} -> BF16", "nvfp4",
                                "BF16", "-", mode, ("U8", packed), ("F8_E4M3", scales),
                                ("F32", np.full(gshape, g, np.float32)), want)
        if len(shape) == 3:  # one global per matrix
            g = wide_scales(shape[0], "F32").reshape(shape[0])
            for mode in ("multiply", "divide"):
                g3 = g.astype(np.float32)[:, None, None]
                combined = e4m3(scales) * g3 if mode == "multiply" else e4m3(scales) / g3
                want = fp4 * expand(combined, -1, 16, 2 * k)
                run.compare(f"nvfp4 {shape} per-matrix globals {mode} -> F32", "nvfp4", "F32", "-",
                            mode, ("U8", packed), ("F8_E4M3", scales), ("F32", g), want)
    packed = fp4_bytes((300, 40))
    scales = fp8_codes((300, 5))
    one = ("F32", np.ones((), np.float32))
    run.refuse("nvfp4: a global scale without its mode", "nvfp4", "BF16", "-", "-",
               ("U8", packed), ("F8_E4M3", scales), one, "needs its mode", "never guessed")
    run.refuse("nvfp4: scales of the logical columns", "nvfp4", "BF16", "-", "-",
               ("U8", packed), ("F8_E4M3", fp8_codes((300, 10))), None, "expected [300, 5]")
    run.refuse("nvfp4: block scales as F32", "nvfp4", "BF16", "-", "-", ("U8", packed),
               ("F32", np.ones((300, 5), np.float32)), None, "expected F8_E4M3")
    run.refuse("nvfp4: a global scale per row", "nvfp4", "BF16", "-", "multiply", ("U8", packed),
               ("F8_E4M3", scales), ("F32", np.ones(300, np.float32)), "the global scale F32[300]")


def main():
    tool = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(tool, tmp)
        test_fp8_block(run)
        test_fp8_channel(run)
        test_mxfp4(run)
        test_nvfp4(run)
    finish("quant_oracle")


if __name__ == "__main__":
    main()
