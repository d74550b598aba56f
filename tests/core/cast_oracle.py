#!/usr/bin/env python3
"""Differential test of d9d's Tensor::to against numpy + ml_dtypes, for every pair of dtypes.

usage: cast_oracle.py CAST_TOOL

Inputs: every code of each 8- and 16-bit source dtype; for wider sources, edge values (zeros,
infinities, NaN, extremes, the rounding boundaries of every narrow format) plus random bit
patterns. The expected results follow PyTorch's semantics, written with numpy and ml_dtypes as
the arithmetic:
  - narrow floats (F16, BF16, F8_*) are reached through F32, as c10 converts (F64 and integers
    are first rounded to F32);
  - integers wrap; floats truncate toward zero into integers (only inputs inside the target's
    range are compared: outside it C++ and numpy disagree, and d9d's documented rule is tested
    in test_cast.cpp);
  - BOOL is x != 0; C64 <- real is (x, 0); real <- C64 takes the real part;
  - F8_E8M0 ignores the sign and maps 0 to code 0 (2^-127), as c10's Float8_e8m0fnu; ml_dtypes
    maps negatives and zero to NaN instead, so the oracle feeds it |x| and sets zeros itself.
NaN results are compared as NaN-ness (NaN payloads differ between libraries). Exit 1 on any
mismatch, listing the first few per pair.

Before the casts, every row of the dtype table (`cast_tool --traits`: signedness, precision,
largest finite and smallest positive value, zero, negative zero, infinity, NaN) is compared with
what numpy and ml_dtypes say of the dtype (iinfo, finfo, and every code of the narrow formats),
the packed F4 and F6 included.
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

warnings.simplefilter("ignore")  # overflow and complex-to-real warnings are expected here

TYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
    "I32": np.int32, "U32": np.uint32, "I64": np.int64, "U64": np.uint64,
    "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F32": np.float32, "F64": np.float64,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "F8_E8M0": ml_dtypes.float8_e8m0fnu, "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz,
    "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz, "C64": np.complex64,
}
INTS = {"U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"}
NARROW = {"F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"}
FLOATS = NARROW | {"F32", "F64"}
PACKED = {"F4": ml_dtypes.float4_e2m1fn, "F6_E2M3": ml_dtypes.float6_e2m3fn,
          "F6_E3M2": ml_dtypes.float6_e3m2fn}  # stored by d9d, not converted
RNG = np.random.default_rng(20261128)


def oracle_traits(name):
    """What numpy and ml_dtypes say of a dtype's values, in `cast_tool --traits` order: signed,
    precision, max finite, min positive, has zero, negative zero, infinity, NaN."""
    if name == "BOOL":
        return (False, 1, 1.0, 1.0, True, False, False, False)
    if name in INTS:
        info = np.iinfo(TYPES[name])
        signed = info.min < 0
        assert not signed or info.min == -info.max - 1
        return (signed, info.bits - signed, float(info.max), 1.0, True, False, False, False)
    t = np.float32 if name == "C64" else PACKED.get(name) or TYPES[name]  # C64: each part
    info = ml_dtypes.finfo(t)
    bits = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}.get(name, np.dtype(t).itemsize * 8)
    if bits <= 16:  # every value it holds
        v = np.arange(2**bits, dtype=np.uint8 if bits <= 8 else np.uint16).view(t)
        v = v.astype(np.float32)
    else:  # IEEE: the special values survive a round trip
        v = np.array([np.inf, np.nan, 0.0, -0.0], dtype=np.float64).astype(t).astype(np.float64)
    return (bool(info.min < 0), info.nmant + 1, float(info.max), float(info.smallest_subnormal),
            bool(np.any(v == 0)), bool(np.any((v == 0) & np.signbit(v))),
            bool(np.any(np.isinf(v))), bool(np.any(np.isnan(v))))


def check_table(tool):
    """Every row of d9d's dtype table against numpy and ml_dtypes."""
    lines = subprocess.run([tool, "--traits"], capture_output=True, text=True,
                           check=True).stdout.split("\n")
    rows = {}
    for line in filter(None, lines):
        name, signed, precision, max_finite, min_positive, *flags = line.split()
        rows[name] = (bool(int(signed)), int(precision), float.fromhex(max_finite),
                      float.fromhex(min_positive), *(bool(int(f)) for f in flags))
    check(sorted(rows) == sorted(list(TYPES) + list(PACKED)), f"the table's dtypes: {sorted(rows)}")
    for name, row in rows.items():
        want = oracle_traits(name)
        check(row == want, f"dtype table row {name}: {row}, numpy/ml_dtypes say {want}")


def bits_view(a):
    size = np.dtype(a.dtype).itemsize
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[size])


def inputs(name):
    t = TYPES[name]
    size = np.dtype(t).itemsize
    if name == "BOOL":
        return np.array([False, True], dtype=np.bool_)
    if size <= 2 and name != "C64":
        codes = np.arange(2 ** (8 * size), dtype={1: np.uint8, 2: np.uint16}[size])
        return codes.view(t)
    if name in INTS:
        info = np.iinfo(t)
        edges = [0, 1, -1, info.min, info.max, info.min + 1, info.max - 1, 255, 256, -129, 65535,
                 65536, 2**24 + 1, 2**31, -(2**31) - 1, 2**53 + 1]
        edges = [e for e in edges if info.min <= e <= info.max]
        rand = RNG.integers(info.min, info.max, size=50000, dtype=t, endpoint=True)
        small = RNG.integers(max(info.min, -70000), min(info.max, 70000), size=20000, dtype=t)
        return np.concatenate([np.array(edges, dtype=t), rand, small])
    # F32, F64, C64: edges of every narrow format, plus random bit patterns.
    specials = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 0.5, 1.5, 2.5, 3.0, -2.0, 448, 464,
                465, 480, 240, 248, 250, 256, 57344, 61440, 65504, 65519, 65520, 2**-24, 2**-25,
                3 * 2**-26, 2**-9, 2**-10, 2**-17, 2**-127, 2**-128, 1e-45, 3.4e38, 1e30, -1e30,
                127.5, 128.5, -128.5, 255.5, 2**31, 2**63, 2**64, -(2**63)]
    near = []
    for n in NARROW:
        codes = np.arange(2 ** (8 * np.dtype(TYPES[n]).itemsize),
                          dtype=np.uint8 if np.dtype(TYPES[n]).itemsize == 1 else np.uint16)
        v = codes.view(TYPES[n]).astype(np.float32)
        v = v[np.isfinite(v)]
        near.append(v)
        near.append(np.nextafter(v, np.float32(np.inf)))
        near.append(np.nextafter(v, np.float32(-np.inf)))
        mids = (v[:-1].astype(np.float64) + v[1:].astype(np.float64)) / 2  # ties
        near.append(mids.astype(np.float32))
    base = np.concatenate([np.array(specials, dtype=np.float32)] + near)
    if name == "F32":
        rand = RNG.integers(0, 2**32, size=200000, dtype=np.uint64).astype(np.uint32).view(np.float32)
        return np.concatenate([base, rand])
    if name == "F64":
        rand = RNG.integers(0, 2**63, size=100000, dtype=np.int64).view(np.float64)
        rand = np.concatenate([rand, -rand])
        jitter = base.astype(np.float64) * (1 + RNG.uniform(-1e-9, 1e-9, size=base.size))
        return np.concatenate([base.astype(np.float64), jitter, rand])
    if name == "C64":
        re = np.concatenate([base, RNG.standard_normal(20000).astype(np.float32) * 300])
        im = np.concatenate([np.zeros_like(base), RNG.standard_normal(20000).astype(np.float32)])
        im[: base.size : 3] = 1.0
        return (re + 1j * im).astype(np.complex64)
    raise AssertionError(name)


def expected(x, src, dst):
    """The oracle: (expected array, mask of elements to compare)."""
    compare = np.ones(x.shape, dtype=bool)
    if src == dst:
        return x, compare
    if src == "C64":
        if dst == "BOOL":
            return (x != 0), compare
        x, src = x.real.astype(np.float32), "F32"
    if dst == "BOOL":
        if src in NARROW:
            x = x.astype(np.float32)
        return (x != 0), compare
    if src == "BOOL":
        x, src = x.astype(np.uint8), "U8"
    if dst in INTS:
        if src in FLOATS:
            v = x.astype(np.float64)
            info = np.iinfo(TYPES[dst])
            # In range: min <= trunc(v) < max + 1 (max + 1 is a power of two, exact in F64).
            compare = np.isfinite(v) & (np.trunc(v) >= info.min) & \
                (np.trunc(v) < float(info.max // 2 + 1) * 2)
            v = np.where(compare, v, 0)
            return np.trunc(v).astype(np.int64).astype(TYPES[dst]) if dst != "U64" else \
                np.trunc(v).astype(np.uint64), compare
        return x.astype(TYPES[dst]), compare  # integer -> integer wraps
    if dst == "C64":
        return x.astype(np.float32).astype(np.complex64), compare
    if dst == "F64":
        return x.astype(np.float64), compare
    x32 = x.astype(np.float32)  # every narrow and F32 target goes through F32
    if dst == "F32":
        return x32, compare
    if dst == "F8_E8M0":
        out = np.abs(x32).astype(TYPES[dst])
        codes = out.view(np.uint8).copy()
        codes[x32 == 0] = 0
        return codes.view(TYPES[dst]), compare
    return x32.astype(TYPES[dst]), compare


def isnan_any(a):
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
        return np.zeros(a.shape, dtype=bool)
    if np.iscomplexobj(a):
        return np.isnan(a.real) | np.isnan(a.imag)
    return np.isnan(a.astype(np.float32))


def main():
    tool = sys.argv[1]
    check_table(tool)
    with tempfile.TemporaryDirectory() as tmp:
        for src in TYPES:
            x = inputs(src)
            in_path = os.path.join(tmp, "in.bin")
            x.tofile(in_path)
            for dst in TYPES:
                out_path = os.path.join(tmp, "out.bin")
                subprocess.run([tool, src, dst, in_path, out_path], check=True)
                got = np.fromfile(out_path, dtype=TYPES[dst])
                want, compare = expected(x, src, dst)
                want = np.asarray(want).astype(TYPES[dst])
                assert got.shape == want.shape, (src, dst, got.shape, want.shape)
                nan_got, nan_want = isnan_any(got), isnan_any(want)
                same_bits = bits_view(got.copy()) == bits_view(want.copy())
                if np.iscomplexobj(got):
                    same_bits = np.all(got.view(np.uint32).reshape(-1, 2) ==
                                       want.view(np.uint32).reshape(-1, 2), axis=1)
                ok = np.where(nan_want, nan_got, same_bits & ~nan_got) | ~compare
                check(ok.all(), lambda: mismatches(x, got, want, ok, src, dst))
    finish("cast oracle")


def mismatches(x, got, want, ok, src, dst):
    bad = np.flatnonzero(~ok)
    lines = [f"{src} -> {dst}: {bad.size} of {x.size} elements differ"]
    for i in bad[:5]:
        lines.append(f"    input {x[i]!r} ({bits_view(x[i:i+1].copy())[0]:#x}): "
                     f"d9d {got[i]!r} ({bits_view(got[i:i+1].copy())[0]:#x}), "
                     f"oracle {want[i]!r} ({bits_view(want[i:i+1].copy())[0]:#x})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
