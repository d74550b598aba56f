#!/usr/bin/env bash
# The whole test suite: the release build in build/, then the same suite built with AddressSanitizer
# and UndefinedBehaviorSanitizer in build-asan/. CUDA is on in both when nvcc is found: without a
# GPU the CUDA tests run on the emulated device (tests/emulated_cuda), so the sanitizers see the
# host side of every device path; protect_shadow_gap=0 lets the real CUDA runtime start under ASan
# on a machine with a GPU. The release build takes the header-only dependencies from the system
# where it has them, the sanitizer build always from subprojects/ (--force-fallback-for), so the
# suite passes both ways. (The no-CUDA build is compiled by the consumer_subproject test.) Each
# `meson test` log is under <build>/meson-logs/testlog.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --tests || exit 1
scripts/build.sh all || exit 1
status=0
meson test -C build --print-errorlogs || status=1

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:protect_shadow_gap=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
if [ -f build-asan/build.ninja ]; then
  meson setup --reconfigure build-asan -Dcuda=auto >/dev/null || exit 1
else
  meson setup build-asan -Dbuildtype=debugoptimized -Db_sanitize=address,undefined \
    --force-fallback-for=doctest,nlohmann_json,CLI11,dlpack >/dev/null || exit 1
fi
meson test -C build-asan --print-errorlogs --no-suite nosan || status=1
exit $status
