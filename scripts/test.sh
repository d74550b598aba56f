#!/usr/bin/env bash
# The whole test suite: the release build in build/, then the same suite built with AddressSanitizer
# and UndefinedBehaviorSanitizer in build-asan/. CUDA is on in both when nvcc is found: without a
# GPU the CUDA tests run on the emulated device (tests/emulated_cuda), so the sanitizers see the
# host side of every device path; protect_shadow_gap=0 lets the real CUDA runtime start under ASan
# on a machine with a GPU. The release build takes the header-only dependencies from the system
# where it has them, the sanitizer build always from subprojects/ (--force-fallback-for), so the
# suite passes both ways. (The no-CUDA build is compiled by the consumer_subproject test.) Each
# `meson test` log is under <build>/meson-logs/testlog.txt.
#
# The sanitizer build is -O1 with line tables (-g1), assertions on, and UBSan without its null,
# alignment and vptr checks: those three made every pointer access a check and tripled the
# build (plan.cpp: 192 s at -O2 -g with every check, 80 s at -O1 -g1, 36 s without the three).
# What they would find is found otherwise: ASan reports a null dereference itself, host loads of
# tensor bytes go through memcpy (kernels/access.hpp), and d9d downcasts its polymorphic types
# only with dynamic_cast (what a vptr check verifies of a static_cast).
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --tests || exit 1
scripts/build.sh all || exit 1
status=0
meson test -C build --print-errorlogs || status=1

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:protect_shadow_gap=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
sanitizer_build=(-Dbuildtype=plain -Doptimization=1 -Ddebug=true -Db_ndebug=false
  -Db_sanitize=address,undefined
  "-Dcpp_args=['-g1','-fno-sanitize=null,alignment,vptr']"
  "-Dc_args=['-g1','-fno-sanitize=null,alignment,vptr']")
if [ -f build-asan/build.ninja ]; then
  meson setup --reconfigure build-asan -Dcuda=auto "${sanitizer_build[@]}" >/dev/null || exit 1
else
  meson setup build-asan "${sanitizer_build[@]}" \
    --force-fallback-for=doctest,nlohmann_json,CLI11,dlpack >/dev/null || exit 1
fi
meson test -C build-asan --print-errorlogs --no-suite nosan || status=1
exit $status
