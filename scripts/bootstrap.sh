#!/usr/bin/env bash
# Installs what building and testing d9d needs on a fresh Debian machine: the Debian packages
# (only those missing, so a second run is quick) and, with --tests, a Python virtual environment
# in .venv with the test oracles (numpy, ml_dtypes, safetensors, huggingface_hub). Python is never
# a runtime dependency of d9d.
#
# The header-only dependencies (doctest, nlohmann/json, CLI11, DLPack) need no package: the build
# uses subprojects/ where the system has none. The -dev packages are installed anyway so that the
# release build uses the system's copies and the sanitizer build (configured with
# --force-fallback-for) the subprojects': the test suite passes both ways.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(meson ninja-build g++ pkg-config python3 libopenmpi-dev openmpi-bin
          doctest-dev nlohmann-json3-dev libcli11-dev liburing-dev)
if [ "${1:-}" = --tests ]; then
  packages+=(python3-venv python3-pip
             clang libclang-rt-14-dev)  # clang: the libFuzzer builds of the parsers
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ "${1:-}" = --tests ] || exit 0
if [ ! -x .venv/bin/python3 ] ||
   ! .venv/bin/python3 -c "import numpy, ml_dtypes, safetensors, huggingface_hub" 2>/dev/null ||
   ! .venv/bin/python3 - scripts/requirements-test.txt <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
for line in open(sys.argv[1]):
    spec = line.split("#")[0].strip()
    if spec:
        req = Requirement(spec)
        assert req.specifier.contains(version(req.name), prereleases=True), spec
PY
  echo "bootstrap: creating or updating .venv with the Python test oracles (scripts/requirements-test.txt)"
  python3 -m venv .venv
  .venv/bin/python3 -m pip install -q --disable-pip-version-check -r scripts/requirements-test.txt
fi
