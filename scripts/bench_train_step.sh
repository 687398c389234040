#!/usr/bin/env bash
# Training-step throughput of runner and of PyTorch + transformers + PEFT, side by side, on
# SmolLM2-135M-Instruct (f32, batch 4 x 256 random tokens, AdamW): LoRA r=8 on q,v; LoRA r=8
# on all linear layers; full fine-tuning. Then the same in bf16 mixed precision: runner's
# `precision = "bf16"` (AMX tiles where the CPU has them) against PyTorch's CPU autocast
# (scripts/torch_autocast_bench.py).
#
#   scripts/bench_train_step.sh PYTHON [LORA_BENCH_PY] [STEPS]
#
# PYTHON is a virtualenv's python with torch, transformers, peft, gguf and safetensors.
# LORA_BENCH_PY defaults to ../shared/reference/lora_bench.py (the PyTorch half). runner
# dequantizes the GGUF once and saves it as a Hugging Face directory for PyTorch
# (transformers will not save a GGUF-loaded model); runner's own benchmark loads the GGUF.
# Prints one JSON line per stack and method.
set -euo pipefail
PY=${1:?usage: scripts/bench_train_step.sh PYTHON [LORA_BENCH_PY] [STEPS]}
REF=${2:-../shared/reference/lora_bench.py}
STEPS=${3:-4}
cd "$(dirname "$0")/.."
cargo build --release --example bench_train_step --bin runner >/dev/null
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
printf 'runner.model.load("smollm2-135m-instruct"):save_pretrained(runner.params.out)\n' > "$TMP/save.lua"
./target/release/runner "$TMP/save.lua" --set out="$TMP/model" --results "$TMP/results" >/dev/null
HF="$TMP/model"
for method in lora lora_all full; do
  ./target/release/examples/bench_train_step "$method" 4 256 "$STEPS"
  "$PY" "$REF" "$HF" "$method" 4 256 "$STEPS"
done
for method in lora lora_all full; do
  RUNNER_BENCH_PRECISION=bf16 ./target/release/examples/bench_train_step "$method" 4 256 "$STEPS"
  "$PY" scripts/torch_autocast_bench.py "$HF" "$method" 4 256 "$STEPS"
done
