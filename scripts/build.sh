#!/usr/bin/env bash
# Configures (once) and builds d9d in build/ (release). Extra arguments go to `meson setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
if [ -f build/build.ninja ]; then
  meson setup --reconfigure build "$@" >/dev/null
else
  meson setup build "$@" >/dev/null
fi
meson compile -C build
