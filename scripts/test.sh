#!/usr/bin/env bash
# The whole test suite: the release build in build/, then the same suite built with AddressSanitizer
# and UndefinedBehaviorSanitizer in build-asan/ (CUDA off there: the CUDA runtime and ASan do not
# mix). Each `meson test` log is under <build>/meson-logs/testlog.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh || exit 1
status=0
meson test -C build --print-errorlogs || status=1

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
if [ -f build-asan/build.ninja ]; then
  meson setup --reconfigure build-asan >/dev/null || exit 1
else
  meson setup build-asan -Dbuildtype=debugoptimized -Db_sanitize=address,undefined \
    -Dcuda=disabled >/dev/null || exit 1
fi
meson test -C build-asan --print-errorlogs --no-suite nosan || status=1
exit $status
