#!/usr/bin/env bash
# Builds a libFuzzer target (clang++, -fsanitize=fuzzer,address,undefined) and runs it for SECONDS
# on the seed corpus corpus/ beside it, with the dictionary (*.dict) beside it:
#   tests/common/run_fuzz.sh SECONDS TARGET.cpp SOURCE...
# TARGET and the SOURCEs it links are paths relative to the repository root. A SOURCE is a
# layer's folder (every .cpp in it, with the stand-in X_none.cpp taken for a CUDA, MPI or NCCL
# source X.cpp or X_backend.cpp) or one file. tests/io and tests/cli register these two:
#   tests/common/run_fuzz.sh 15 tests/io/fuzz/fuzz_header.cpp d9d/core io
#   tests/common/run_fuzz.sh 15 tests/cli/fuzz/fuzz_spec.cpp d9d/core io d9d/dist d9d/mapper \
#       d9d/model_state
# Build output and the growing corpus go to $D9D_FUZZ_BUILD_DIR (default build-TARGET/ at the
# repository root). Needs the Debian packages clang and libclang-rt-14-dev; without them this
# fails (exit 1) rather than pretending to have fuzzed. Crash inputs are left in the build dir.
set -euo pipefail
seconds="$1"
root="$(cd "$(dirname "$0")/../.." && pwd)"
target="$root/$2"
shift 2
here="$(dirname "$target")"
name="$(basename "$target" .cpp)"
out="${D9D_FUZZ_BUILD_DIR:-$root/build-$name}"
cxx="${CLANGXX:-clang++}"

if ! command -v "$cxx" >/dev/null; then
  echo "run_fuzz.sh: $cxx not found; install the Debian packages clang and libclang-rt-14-dev" >&2
  exit 1
fi
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' |
    "$cxx" -x c++ -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
  echo "run_fuzz.sh: $cxx cannot link -fsanitize=fuzzer; install libclang-rt-14-dev" >&2
  exit 1
fi

mkdir -p "$out/obj" "$out/corpus"
out="$(cd "$out" && pwd)"  # the run below starts in it
# Every layer's public headers and the header-only dependencies from subprojects/; a source's own
# folder for its private headers.
flags=(-std=c++20 -O1 -gline-tables-only -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined
       -fno-sanitize-recover=undefined -I"$root/d9d/include" -I"$root/io/include")
for inc in "$root"/d9d/*/include "$root"/subprojects/{dlpack,nlohmann_json,CLI11}/include; do
  flags+=(-I"$inc")
done
# The header Meson generates for the mapper layer (the built-in specs), made here the same way;
# rewritten only when the specs change, so an unchanged build stays fresh.
mkdir -p "$out/gen"
python3 "$root/d9d/mapper/embed_specs.py" "$out/gen/builtin_spec_texts.hpp.new" "$root"/specs/*.json
if cmp -s "$out/gen/builtin_spec_texts.hpp.new" "$out/gen/builtin_spec_texts.hpp"; then
  rm "$out/gen/builtin_spec_texts.hpp.new"
else
  mv "$out/gen/builtin_spec_texts.hpp.new" "$out/gen/builtin_spec_texts.hpp"
fi
flags+=(-I"$out/gen")
sources=()
watched=("$root/d9d" "$root/io" "$here" "$out/gen")
for s in "$@"; do
  if [ -d "$root/$s" ]; then
    flags+=(-I"$root/$s")
    for f in "$root/$s"/*.cpp; do
      # A CUDA, MPI or NCCL source has a stand-in for builds without it: take the stand-in.
      [ -e "${f%.cpp}_none.cpp" ] || [ -e "${f%_backend.cpp}_none.cpp" ] && continue
      # version.cpp needs the header Meson generates from project(version:); no target does.
      [ "$(basename "$f")" = version.cpp ] && continue
      sources+=("$f")
    done
  else
    flags+=(-I"$(dirname "$root/$s")")
    sources+=("$root/$s")
  fi
done
sources+=("$target")
# Rebuild when any source or header is newer than the binary; compile nproc files at a time.
binary="$out/$name"
stale=1
if [ -x "$binary" ] && [ -z "$(find "${watched[@]}" \( -name '*.cpp' -o -name '*.hpp' \) \
      -newer "$binary" -print -quit)" ]; then
  stale=0
fi
objects=()
running=0
for f in "${sources[@]}"; do
  o="$out/obj/$(echo "${f#"$root"/}" | tr / _).o"
  objects+=("$o")
  if [ "$stale" = 1 ]; then
    "$cxx" "${flags[@]}" -c "$f" -o "$o" &
    running=$((running + 1))
    if [ "$running" -ge "$(nproc)" ]; then wait -n; running=$((running - 1)); fi
  fi
done
while [ "$running" -gt 0 ]; do wait -n; running=$((running - 1)); done
if [ "$stale" = 1 ]; then
  "$cxx" -fsanitize=fuzzer,address,undefined "${objects[@]}" -pthread -o "$binary"
fi

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
cd "$out"
"$binary" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
  -dict="$(ls "$here"/*.dict | head -n 1)" -print_final_stats=1 "$out/corpus" "$here/corpus"
