#!/usr/bin/env bash
# Peak memory of a training step for Ladder Side-Tuning and AttentionFusion beside LoRA and
# full fine-tuning, each method in a process of its own (recipes/method_memory.lua).
# Usage: scripts/bench_method_memory.sh [RUNNER_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
runner=${1:-target/release/runner}
# One trial per shard, so each runs in a fresh process; then the shards are merged.
for i in 0 1 2 3 4; do
  "$runner" recipes/method_memory.lua --shard "$i/5"
done
"$runner" merge results/method_memory
"$runner" table results/method_memory --rows method --value peak_mem_mb
"$runner" table results/method_memory --rows method --value seconds
