#!/usr/bin/env bash
# Configures build/ (release) once and builds the given Meson targets, by default only the d9d
# command-line tool (what README's main job runs); `scripts/build.sh all` builds everything
# (tests and benchmarks too; scripts/test.sh does that through `meson test`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
if [ -f build/build.ninja ]; then
  meson setup --reconfigure build >/dev/null
else
  meson setup build >/dev/null
fi
if [ "${1:-}" = all ]; then
  meson compile -C build
else
  meson compile -C build "${@:-d9d/cli/d9d}"
fi
