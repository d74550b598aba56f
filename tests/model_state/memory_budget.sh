#!/usr/bin/env bash
# Converts a 320 MiB checkpoint with memory_budget = 80 MiB (a quarter) and checks that the
# converting process's peak RSS stays within baseline + budget + the largest group + 16 MiB of
# runtime slack (thread stacks, the writer's staging, allocator). Run without sanitizers: ASan's
# shadow memory would be measured too.
set -euo pipefail
probe=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$probe" make "$tmp/src"
budget=$((80 * 1024 * 1024))
read -r baseline peak largest < <("$probe" convert "$tmp/src" "$tmp/dst" "$budget")
src_kib=$(du -sk "$tmp/src" | cut -f1)
limit=$((baseline + budget / 1024 + largest / 1024 + 16 * 1024))
echo "checkpoint ${src_kib} KiB, budget $((budget / 1024)) KiB, largest group $((largest / 1024)) KiB"
echo "baseline ${baseline} KiB, peak ${peak} KiB, limit ${limit} KiB"
[ "$src_kib" -ge $((4 * budget / 1024)) ] || { echo "FAIL: checkpoint is not 4x the budget"; exit 1; }
[ "$peak" -le "$limit" ] || { echo "FAIL: peak RSS above the limit"; exit 1; }
echo ok
