#!/usr/bin/env bash
# Mapper build / group / shard time, d9d (C++) beside the reference Python d9d 0.24, same graph
# (tests/mapper/moe_graph.hpp; reference_bench.py), at about 1k, 10k and 100k tensors.
#
#   bench/mapper/run.sh [BUILD_DIR]        default BUILD_DIR: build
#
# The reference runs from the virtual environment $D9D_REF_VENV (default .venv-ref, made here with
# `pip install d9d==0.24.0 numpy` when missing; d9d pulls in torch, and the conversion benchmark
# needs numpy in it too). Where it cannot be installed, the
# reference columns say so and the C++ figures stand alone. Each reference size gets
# $D9D_REF_TIMEOUT seconds (default 900): its sequential group merge is quadratic.
set -uo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
bin=$build/bench/mapper/bench_mapper
if [ ! -x "$bin" ]; then
  ninja -C "$build" bench/mapper/bench_mapper >/dev/null || { echo "run.sh: cannot build $bin" >&2; exit 1; }
fi
venv=${D9D_REF_VENV:-.venv-ref}
timeout_s=${D9D_REF_TIMEOUT:-900}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

"$bin" --json >"$out/cpp.jsonl" || { echo "run.sh: $bin failed" >&2; exit 1; }

ref_note=""
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import d9d.model_state.mapper" 2>/dev/null; then
  echo "run.sh: installing the reference (pip install d9d==0.24.0 numpy) into $venv ..." >&2
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q d9d==0.24.0 numpy; } >"$out/pip.log" 2>&1; then
    ref_note="reference skipped: pip install d9d==0.24.0 failed (see below)"
    tail -3 "$out/pip.log" >&2
  fi
fi
if [ -z "$ref_note" ]; then
  for size in "30 8" "126 23" "126 261"; do
    # shellcheck disable=SC2086
    if ! timeout "$timeout_s" "$venv/bin/python" -W ignore bench/mapper/reference_bench.py $size \
        >>"$out/ref.jsonl" 2>"$out/ref.err"; then
      echo "{\"impl\": \"d9d-python-0.24\", \"layers\": ${size% *}, \"experts\": ${size#* }, \"timeout_s\": $timeout_s}" >>"$out/ref.jsonl"
    fi
  done
fi

python3 - "$out/cpp.jsonl" "$out/ref.jsonl" "$ref_note" <<'PY'
import json, sys
cpp = [json.loads(l) for l in open(sys.argv[1])]
try:
    ref = {(r["layers"], r["experts"]): r for r in map(json.loads, open(sys.argv[2]))}
except FileNotFoundError:
    ref = {}
note = sys.argv[3]
print(f"{'tensors':>8} {'groups':>7} | {'d9d C++ build':>13} {'group':>8} {'shard x8':>8} {'total':>8} {'spec':>8} |"
      f" {'Python d9d total':>16} {'group':>9} | {'speedup':>8}")
for c in cpp:
    r = ref.get((c["layers"], c["experts"]))
    line = (f"{c['tensors']:>8} {c['groups']:>7} | {c['build_s']:>12.4f}s {c['group_s']:>7.4f}s"
            f" {c['shard_s']:>7.4f}s {c['total_s']:>7.4f}s {c['spec_s']:>7.4f}s |")
    if r is None:
        line += f" {'(skipped)':>16} {'':>9} | {'':>8}"
    elif "timeout_s" in r:
        line += f" {'> ' + str(r['timeout_s']) + 's':>16} {'':>9} | {'> ' + format(r['timeout_s'] / c['total_s'], '.0f') + 'x':>8}"
    else:
        assert r["groups"] == c["groups"], (r, c)
        line += f" {r['total_s']:>15.4f}s {r['group_s']:>8.4f}s | {r['total_s'] / c['total_s']:>7.1f}x"
    print(line)
if note:
    print(note)
PY
