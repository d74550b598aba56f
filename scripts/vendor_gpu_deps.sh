#!/usr/bin/env bash
# Copies the header-only dependencies of the build (doctest, nlohmann/json, CLI11, DLPack) from
# this machine's /usr/include into .gpu-deps/ (ignored by git), for a machine that has a compiler
# and nvcc but no -dev packages and no network: carry the folder along with the checkout and
# configure with -Dvendored-deps=.gpu-deps (bench/gpu_check.sh does).
# Usage: scripts/vendor_gpu_deps.sh [DEST]   (DEST relative to the repository root; default .gpu-deps)
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.gpu-deps}"
src=/usr/include
rm -rf "$dest"
mkdir -p "$dest"
for path in doctest/doctest.h nlohmann CLI dlpack/dlpack.h; do
  if [ ! -e "$src/$path" ]; then
    echo "vendor_gpu_deps: $src/$path is missing (run scripts/bootstrap.sh first)" >&2
    exit 1
  fi
  mkdir -p "$dest/$(dirname "$path")"
  cp -r "$src/$path" "$dest/$path"
done
# Where each came from, for the record.
{
  echo "Copied from $src on $(date -u +%Y-%m-%dT%H:%M:%SZ) by scripts/vendor_gpu_deps.sh"
  dpkg-query -W -f='${Package} ${Version}\n' doctest-dev nlohmann-json3-dev libcli11-dev \
    libdlpack-dev 2>/dev/null || true
} > "$dest/SOURCES.txt"
du -sh "$dest"
