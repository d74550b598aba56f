#!/usr/bin/env python3
"""Differential test: malformed safetensors files through d9d and the reference implementation.

  python3 differential.py IO_TOOL

A corpus of files (hand-built edge cases, structured mutations of valid headers, and random byte
mutations, all from a fixed seed) is opened by Python `safetensors` (safe_open) and by d9d
(`io_tool check`). The rule: where the reference rejects, d9d rejects. Where d9d is stricter, the
rule it applied must be one of the documented stricter rules (STRICTER below); every such case is
counted and one example of each is printed. Where both accept, both must read the same file: the
same metadata, tensor names, dtypes, shapes and bytes (no parser differential).
"""
import json
import os
import random
import re
import subprocess
import sys
import tempfile

import safetensors

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from oracle import check, finish  # noqa: E402

TOOL = sys.argv[1]
# d9d rules that may reject what the reference accepts, and why.
STRICTER = {
    5: "whitespace before the opening '{': the reference skips it; d9d wants '{' at the header's "
       "first byte, as every writer puts it, so that '{' at byte 8 identifies the format",
    6: "duplicate keys: the reference (serde) keeps the last value silently; d9d rejects them, "
       "since two readers could disagree on which one counts",
    7: "\"__metadata__\": null is read by the reference as no metadata; d9d wants an object",
    8: "unknown keys in a tensor entry are ignored by the reference; d9d rejects them, since a "
       "misspelled key (\"data_offset\") would otherwise go unnoticed",
    10: "a shape size in [2^63, 2^64) beside a 0 (a zero-size tensor): the reference's usize "
        "takes it; d9d's sizes are int64, as PyTorch's are, and no real tensor has such a dim",
}

rng = random.Random(20261128)


def pack(header: bytes, data: bytes = b"", n=None) -> bytes:
    return (len(header) if n is None else n).to_bytes(8, "little") + header + data


def valid_header():
    """A random valid header dict (insertion-ordered) and its data size."""
    entries = {}
    offset = 0
    dtypes = [("F32", 4), ("F16", 2), ("BF16", 2), ("I64", 8), ("U8", 1), ("BOOL", 1), ("F64", 8)]
    for i in range(rng.randint(1, 4)):
        dt, size = rng.choice(dtypes)
        shape = [rng.randint(0, 3) for _ in range(rng.randint(0, 3))]
        n = size
        for s in shape:
            n *= s
        entries[f"t{i}"] = {"dtype": dt, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    if rng.random() < 0.5:
        entries = {"__metadata__": {"format": "pt"}, **entries}
    return entries, offset


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def hand_built():
    one = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    cases = [pack(b"", n=0)[:k] for k in range(8)]  # 0..7 bytes
    cases += [
        pack(one, bytes(8)),
        pack(one, bytes(8), n=len(one) + 8 + 8 + 1),  # header size = file size - 7
        pack(b"{}", n=100_000_001), pack(b"{}", n=2**64 - 1),
        pack(b'{"a\x80":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', bytes(8)),
        pack(one + b"\0\0\0", bytes(8)), pack(one + b"   ", bytes(8)), pack(b" " + one, bytes(8)),
        pack(one, bytes(9)),  # trailing data byte
        pack(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
             b'"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', bytes(8)),
        pack(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
             b'"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', bytes(16)),
        pack(b'{"a":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}}', bytes(8)),
        pack(b'{"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}', bytes(8)),
        pack(b'{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}', bytes(1)),
        pack(b'{"a":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}', bytes(1)),
        pack(b'{"a":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,1]}}', bytes(1)),
        pack(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}}', bytes(1)),
        pack(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}', bytes(2)),
        pack(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}}', bytes(1)),
        pack(b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
             b'"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}}', bytes(5)),  # gap
        pack(b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
             b'"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}', bytes(3)),  # overlap
        pack(b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
             b'"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', bytes(2)),  # aliasing
        pack(b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', bytes(1)),  # past EOF
        pack(b'{"__metadata__":null}'), pack(b'{"__metadata__":{"a":1}}'),
        pack(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":0}}', bytes(1)),
        pack(b'{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}', bytes(1)),
        pack(b'{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}', bytes(8)),
        pack(b'{"a":{"dtype":"U8","shape":[0,9223372036854775808],"data_offsets":[0,0]}}'),
        pack(b'{"a":{"dtype":"U8","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}}'),
        pack(b'{"a":{"dtype":"U8","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}'),
        pack(b'{"a":{"dtype":"U8","shape":[0,18446744073709551615],"data_offsets":[0,0]}}'),
    ]
    return cases


NASTY_VALUES = [-1, 0, 1, 2, 3, 1.0, 2.5, 1e3, "2", None, True, [], {}, 2**63 - 1, 2**63, 2**64,
                -(2**63), 10**30]


def structured_mutant():
    header, size = valid_header()
    names = [k for k in header if k != "__metadata__"]
    target = rng.choice(names)
    entry = header[target]
    kind = rng.randrange(14)
    data_size = size
    text = None
    if kind == 0:
        entry["dtype"] = rng.choice(["f32", "F 32", "F128", "", "I4", "FP8", 5, None, "U1",
                                     "F8_E4M3", "C64", "F4", "F6_E2M3"])
    elif kind == 1 and entry["shape"]:
        entry["shape"][rng.randrange(len(entry["shape"]))] = rng.choice(NASTY_VALUES)
    elif kind == 2:
        entry["data_offsets"][rng.randrange(2)] = rng.choice(NASTY_VALUES)
    elif kind == 3:
        entry["data_offsets"] = rng.choice([[], [0], [0, 0, 0], "0,1", None,
                                            list(reversed(entry["data_offsets"]))])
    elif kind == 4:
        del entry[rng.choice(["dtype", "shape", "data_offsets"])]
    elif kind == 5:
        entry[rng.choice(["x", "Dtype", "data_offset", "shape "])] = rng.choice(NASTY_VALUES)
    elif kind == 6:
        header["__metadata__"] = rng.choice([None, [], "pt", {"a": 1}, {"a": None}, {"a": ["b"]},
                                             {"a": "b"}, {}])
    elif kind == 7:
        data_size += rng.choice([-2, -1, 1, 2, 7])
    elif kind == 8:  # shift one range
        delta = rng.choice([-2, -1, 1, 2])
        entry["data_offsets"] = [entry["data_offsets"][0] + delta, entry["data_offsets"][1] + delta]
    elif kind == 9:  # duplicate an entry textually (same or different range)
        body = dumps(header)[:-1]
        dup = dict(entry)
        if rng.random() < 0.5:
            dup = {**dup, "data_offsets": [size, size + (entry["data_offsets"][1] - entry["data_offsets"][0])]}
            data_size += dup["data_offsets"][1] - dup["data_offsets"][0]
        text = body + b"," + dumps({target: dup})[1:]
    elif kind == 10:  # padding and framing
        text = dumps(header) + rng.choice([b" " * 5, b"\0" * 3, b"\n", b"\t ", b"x", b"{}", b" \0"])
        if rng.random() < 0.3:
            text = rng.choice([b" ", b"\n", b"\xef\xbb\xbf"]) + dumps(header)
    elif kind == 11:  # the whole header is not an object
        text = rng.choice([b"[]", b"null", b"1", b'"x"', b"", b"{", b"}"])
    elif kind == 12:  # key escapes and odd names
        text = dumps(header).replace(f'"{target}"'.encode(),
                                     rng.choice([b'"\\u0074"', b'"\\ud800"', b'"a\\qb"', b'"\\/"',
                                                 b'"__metadata__"', b'""', b'"\\u0000"']), 1)
    else:  # a zero-size tensor placed somewhere
        header[f"z{rng.randint(0, 9)}"] = {"dtype": "F32", "shape": [0],
                                          "data_offsets": [rng.randint(0, size + 1)] * 2}
    if text is None:
        text = dumps(header)
    n = len(text)
    if rng.random() < 0.15:
        n += rng.choice([-8, -1, 1, 8, 100_000_000, 2**40])
    return pack(text, bytes(max(0, data_size)), n=max(0, n))


def byte_mutant():
    header, size = valid_header()
    f = bytearray(pack(dumps(header) + b" " * rng.randrange(8), bytes(size)))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        i = rng.randrange(len(f))
        if op == 0:
            f[i] = rng.randrange(256)
        elif op == 1:
            f[i] ^= 1 << rng.randrange(8)
        elif op == 2:
            del f[i]
        else:
            f.insert(i, rng.randrange(256))
    return bytes(f)


def python_accepts(path):
    try:
        with safetensors.safe_open(path, framework="np") as f:
            f.metadata()
            list(f.keys())
        return True, ""
    except Exception as e:  # noqa: BLE001 - any failure is a rejection
        return False, str(e).split("\n")[0]


def same_reading(data, d9d_json):
    """Both accepted `data`: do they read the same metadata, names, dtypes, shapes and bytes?"""
    mine = json.loads(d9d_json)
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as fh:
        fh.write(data)
        fh.flush()
        with safetensors.safe_open(fh.name, framework="np") as f:
            if (f.metadata() or {}) != mine["metadata"]:
                return f"metadata {f.metadata()} vs {mine['metadata']}"
    ref = dict(safetensors.deserialize(data))
    if sorted(ref) != sorted(t[0] for t in mine["tensors"]):
        return f"names {sorted(ref)} vs {[t[0] for t in mine['tensors']]}"
    base = mine["data_offset"]
    for name, dtype, shape, begin, end in mine["tensors"]:
        r = ref[name]
        if r["dtype"] != dtype or list(r["shape"]) != shape:
            return f"{name}: {r['dtype']} {r['shape']} vs {dtype} {shape}"
        if bytes(r["data"]) != data[base + begin:base + end]:
            return f"{name}: different bytes"
    return ""


def main():
    corpus = hand_built()
    corpus += [structured_mutant() for _ in range(2000)]
    corpus += [byte_mutant() for _ in range(2000)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, data in enumerate(corpus):
            p = os.path.join(tmp, f"{i:05d}.safetensors")
            with open(p, "wb") as fh:
                fh.write(data)
            paths.append(p)
        d9d = []
        for start in range(0, len(paths), 500):
            out = subprocess.run([TOOL, "check", *paths[start:start + 500]], capture_output=True,
                                 text=True, check=True)
            d9d += out.stdout.splitlines()
        assert len(d9d) == len(paths), (len(d9d), len(paths))
        ref = [python_accepts(p) for p in paths]

    both_accept = both_reject = missed = 0  # missed: the reference rejects, d9d accepts
    stricter = {}  # rule -> (count, example)
    for data, (py_ok, py_msg), line in zip(corpus, ref, d9d):
        d9d_ok = line.startswith("OK ")
        problem = ""
        if py_ok and d9d_ok:
            both_accept += 1
            differs = same_reading(data, line[3:])
            if differs:
                problem = "both accept but read differently: " + differs
        elif not py_ok and not d9d_ok:
            both_reject += 1
        elif d9d_ok:
            missed += 1
            problem = f"the reference rejects ({py_msg}) but d9d accepts"
        else:
            m = re.search(r"\(rule (\d+):", line)
            rule = int(m.group(1)) if m else -1
            count, example = stricter.get(rule, (0, line))
            stricter[rule] = (count + 1, example)
            if rule not in STRICTER:
                problem = "d9d rejects by an undocumented stricter rule: " + line
        check(not problem, lambda: f"{problem[:300]}; file {data[:200]!r}")

    print(f"corpus: {len(corpus)} files; both accept {both_accept} (and read them the same), "
          f"both reject {both_reject}, "
          f"d9d stricter {sum(c for c, _ in stricter.values())}, reference stricter {missed}")
    for rule, (count, example) in sorted(stricter.items()):
        print(f"  d9d stricter by rule {rule}: {count} files; e.g. {example[7:220]}")
        if rule in STRICTER:
            print(f"    why: {STRICTER[rule]}")
    check(both_accept >= 100 and both_reject >= 100,
          "the corpus is not mixed enough to mean anything")
    finish("differential")


if __name__ == "__main__":
    main()
