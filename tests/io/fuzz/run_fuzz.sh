#!/usr/bin/env bash
# Builds the libFuzzer target (clang++, -fsanitize=fuzzer,address,undefined) from core + io and
# runs it for SECONDS (default 60) on the seed corpus in corpus/, with the dictionary.
#   tests/io/fuzz/run_fuzz.sh [SECONDS]
# Build output and the growing corpus go to $D9D_FUZZ_BUILD_DIR (default build-io-fuzz/ at the
# repository root). Needs the Debian packages clang and libclang-rt-14-dev; without them this
# fails (exit 1) rather than pretending to have fuzzed. Crash inputs are left in the build dir.
set -euo pipefail
seconds="${1:-60}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${D9D_FUZZ_BUILD_DIR:-$root/build-io-fuzz}"
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
flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined
       -fno-sanitize-recover=undefined -I"$root/d9d/numerics/include" -I"$root/d9d/include"
       -I"$root/subprojects/dlpack/include" -I"$root/io/include" -I"$root/io")
sources=()
for f in "$root"/d9d/core/*.cpp "$root"/io/*.cpp "$here/fuzz_header.cpp"; do
  # A CUDA-only source X.cpp has a stand-in X_none.cpp for builds without CUDA: take the stand-in.
  [ -e "${f%.cpp}_none.cpp" ] && continue
  # version.cpp needs the header Meson generates from project(version:); the parser does not.
  [ "$(basename "$f")" = version.cpp ] && continue
  sources+=("$f")
done
# Rebuild when any source or header is newer than the binary; compile nproc files at a time.
binary="$out/fuzz_header"
stale=1
if [ -x "$binary" ] && [ -z "$(find "$root/d9d/core" "$root/d9d/include" "$root/d9d/numerics" "$root/io" "$here" \
      \( -name '*.cpp' -o -name '*.hpp' \) -newer "$binary" -print -quit)" ]; then
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
"$out/fuzz_header" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
  -dict="$here/safetensors.dict" -print_final_stats=1 "$out/corpus" "$here/corpus"
