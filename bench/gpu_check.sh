#!/usr/bin/env bash
# The GPU check: one command on a machine with one H200 (nvcc 13, meson + ninja from pip, NCCL in
# the CUDA toolkit, no Debian -dev packages, no network). Builds d9d in a fresh build folder from
# the checkout alone (the header-only dependencies are the copies in subprojects/; nothing needs to
# be carried), runs the CUDA tests (CPU-vs-GPU
# parity of every kernel and op, the device path of read_model_state), then times everything and
# prints one table last. Never touches the card's clocks, power or modes. Takes a few minutes.
#
# Usage: bench/gpu_check.sh [CHECKPOINT_GIB]   (default 8; needs that much free disk under $TMPDIR)
# Environment: BUILD_DIR (default build-gpu-check), TMPDIR (scratch for the synthetic checkpoint),
# EMULATED=1: a rehearsal on a machine without a GPU, everything on the emulated CUDA device
# (Note [emulated CUDA device] in tests/emulated_cuda/cudart.cpp): checks the script, the build and
# that every step runs; its figures mean nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
build="${BUILD_DIR:-build-gpu-check}"
gib="${1:-8}"
scratch="${TMPDIR:-/tmp}/d9d-gpu-check-$$"
logs="$build-logs"  # kept after the run (ignored by git, as every build* folder)
status=0
step() { printf '\n== %s (%ds elapsed)\n' "$1" $((SECONDS - start)); }

command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true

step "configure ($build)"
rm -rf "$build" "$logs"
mkdir -p "$logs"
# -Dwerror=false: that machine's host compiler may differ from the development machine's and
# warn where ours does not; warnings are errors on the development machine and in CI, and a new
# warning there must not stop the GPU check.
# --force-fallback-for: the header-only dependencies from subprojects/ whatever that machine has;
# --wrap-mode=nodownload: nothing is fetched.
meson setup "$build" -Dbuildtype=release -Dmpi=disabled --wrap-mode=nodownload \
  --force-fallback-for=doctest,nlohmann_json,CLI11,dlpack \
  -Dcuda=enabled -Dtests=true -Dwerror=false >"$logs/setup.log" 2>&1 || { cat "$logs/setup.log"; exit 1; }
grep -A8 '^  d9d$' "$logs/setup.log" || true

step "build (only what the check runs)"
targets=(tests/core/test_cuda_storage tests/core/test_cuda_parity
         tests/model_state/test_cuda_reader bench/cuda/bench_cuda)
if [ "${EMULATED:-0}" = 1 ]; then
  major=$(nvcc --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
  targets+=("tests/emulated_cuda/libcudart.so.$major" tests/emulated_cuda/libnccl.so.2)
  export LD_LIBRARY_PATH="$PWD/$build/tests/emulated_cuda" D9D_EMULATED_CUDA_DELAY_US=0
  echo "gpu_check: EMULATED=1: a rehearsal on the emulated CUDA device; the figures mean nothing"
fi
timeout 360 ninja -C "$build" "${targets[@]}" || { echo "gpu_check: build failed" >&2; exit 1; }

step "CUDA tests"
timeout 240 meson test -C "$build" --no-rebuild --print-errorlogs \
  cuda_storage cuda_parity cuda_reader | tee "$logs/test.log" || status=1
if ! grep -Eq '^Skipped: +0 *$' "$logs/test.log"; then
  echo "gpu_check: a CUDA test was skipped: no CUDA device visible?" >&2
  status=1
fi

step "timings"
mkdir -p "$scratch"
timeout 240 "$build/bench/cuda/bench_cuda" "$scratch" "$gib" || status=1
rm -rf "$scratch"

printf '\ngpu_check: %s in %ds\n' "$([ $status -eq 0 ] && echo PASSED || echo FAILED)" \
  $((SECONDS - start))
exit $status
