#!/usr/bin/env bash
# Training-step throughput of runner and of PyTorch + transformers + PEFT, side by side, on
# SmolLM2-135M-Instruct (f32, batch 4 x 256 random tokens, AdamW): LoRA r=8 on q,v; LoRA r=8
# on all linear layers; full fine-tuning.
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
HF=$(mktemp -d)
trap 'rm -rf "$HF"' EXIT
printf 'runner.model.load("smollm2-135m-instruct"):save_pretrained(runner.params.out)\n' > "$HF/save.lua"
./target/release/runner "$HF/save.lua" --set out="$HF/model" --results "$HF/results" >/dev/null
HF="$HF/model"
for method in lora lora_all full; do
  ./target/release/examples/bench_train_step "$method" 4 256 "$STEPS"
  "$PY" "$REF" "$HF" "$method" 4 256 "$STEPS"
done
