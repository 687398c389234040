#!/usr/bin/env bash
# Peak memory of a training step for Ladder Side-Tuning and AttentionFusion beside LoRA and
# full fine-tuning, each method in a process of its own (recipes/method_memory.lua).
# Usage: scripts/bench_method_memory.sh [RUNNER_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
runner=${1:-target/release/runner}
for m in full lora_all lora ladder attention_fusion; do
  "$runner" recipes/method_memory.lua --set method="$m"
done
"$runner" table results/method_memory --rows method --value peak_mem_mb
"$runner" table results/method_memory --rows method --value seconds
