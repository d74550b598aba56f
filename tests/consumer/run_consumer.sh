#!/usr/bin/env bash
# Builds and runs the consumer project against d9d in one of two ways:
#   run_consumer.sh pkgconfig SOURCE_ROOT BUILD_ROOT   install BUILD_ROOT into a staging folder,
#                                                       find d9d through its d9d.pc
#   run_consumer.sh subproject SOURCE_ROOT             d9d as subprojects/d9d of a parent project
#   run_consumer.sh c SOURCE_ROOT BUILD_ROOT           as pkgconfig, then the C example engine
#                                                       (examples/c) built with cc against <d9d/d9d.h>
#                                                       and run on a checkpoint of the staged `d9d demo`
set -euo pipefail
mode=$1
src=$(cd "$2" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

case "$mode" in
  pkgconfig|c)
    build=$(cd "$3" && pwd)
    meson install -C "$build" --no-rebuild --quiet --destdir "$tmp/stage" >/dev/null
    pc=$(find "$tmp/stage" -name d9d.pc | head -n 1)
    [ -n "$pc" ] || { echo "no d9d.pc was installed"; exit 1; }
    test -f "$(dirname "$pc")/../../include/d9d/d9d.hpp" || \
      test -n "$(find "$tmp/stage" -path '*/include/d9d/d9d.hpp')" || { echo "headers not installed"; exit 1; }
    export PKG_CONFIG_PATH="$(dirname "$pc")"
    libdir=$(pkg-config --variable=libdir d9d)
    export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "d9d.pc: $pc (version $(pkg-config --modversion d9d), cflags $(pkg-config --cflags d9d))"
    # A consumer gets d9d's include directory and libd9d, not d9d's own dependencies' flags.
    case "$(pkg-config --cflags --libs d9d)" in
      *mpi*|*nccl*|*cudart*) echo "d9d.pc hands on d9d's private dependencies: $(pkg-config --cflags --libs d9d)"; exit 1 ;;
    esac
    if [ "$mode" = c ]; then
      test -n "$(find "$tmp/stage" -path '*/include/d9d/d9d.h')" || { echo "d9d.h not installed"; exit 1; }
      # shellcheck disable=SC2046  # pkg-config's flags are words
      cc -std=c11 -Wall -Wextra -pedantic -Werror "$src/examples/c/engine.c" -o "$tmp/engine" \
        $(pkg-config --cflags --libs d9d)
      "$(find "$tmp/stage" -path '*/bin/d9d' | head -n 1)" demo --dir "$tmp/demo" --hidden 128 \
        --layers 3 --heads 8 --kv-heads 2 --intermediate 352 --vocab 1000 >/dev/null
      "$tmp/engine" "$tmp/demo/llama-hf" "$src/examples/specs/llama_hf_to_fused.json"
      exit 0
    fi
    meson setup "$tmp/build" "$src/tests/consumer" --wrap-mode=nofallback >/dev/null
    ;;
  subproject)
    mkdir -p "$tmp/parent/subprojects"
    cp "$src/tests/consumer/meson.build" "$src/tests/consumer/consumer.cpp" "$tmp/parent/"
    ln -s "$src" "$tmp/parent/subprojects/d9d"
    meson setup "$tmp/build" "$tmp/parent" --force-fallback-for=d9d -Dd9d:cuda=disabled >/dev/null
    ;;
  *) echo "usage: run_consumer.sh pkgconfig|subproject|c SOURCE_ROOT [BUILD_ROOT]"; exit 2 ;;
esac
meson compile -C "$tmp/build" >/dev/null
"$tmp/build/consumer"
