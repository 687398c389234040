#!/usr/bin/env bash
# bf16 on the CPU: runner's LoRA r=8 q,v training step on SmolLM2-135M-Instruct (batch 4 x 256
# random tokens, AdamW) in f32, in bf16 without a matrix unit (RUNNER_AMX=0 RUNNER_BF16_DOT=0:
# rounded f32 arithmetic through Burn's casts), in bf16 on AVX512_BF16's vdpbf16ps
# (RUNNER_AMX=0), and where the CPU has AMX in bf16 on its tiles; beside PyTorch + PEFT in f32
# and under CPU autocast bf16, in one run. On an AMX CPU PyTorch's autocast runs twice: limited
# to AVX512_BF16 (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, oneDNN's own switch), to pair with the
# vdpbf16ps row, and as it comes (AMX).
#
#   scripts/bench_bf16_cpu.sh PYTHON [LORA_BENCH_PY] [STEPS] [METHOD] [REPEATS]
#
# PYTHON is a virtualenv's python with torch, transformers, peft and safetensors;
# LORA_BENCH_PY defaults to ../shared/reference/lora_bench.py (PyTorch's f32 step);
# scripts/torch_bench.py is PyTorch's bf16 step. METHOD is lora (default), lora_all or full.
# Prints one JSON line per run (s_per_step, peak RSS). REPEATS (default 1) runs the whole
# sequence that many times over, so each configuration's runs interleave with the others'
# (a virtual machine's speed drifts by 10-15% within the hour). PORTABLE=0 skips the slow
# no-matrix-unit row.
set -euo pipefail
PY=${1:?usage: scripts/bench_bf16_cpu.sh PYTHON [LORA_BENCH_PY] [STEPS] [METHOD] [REPEATS]}
REF=${2:-../shared/reference/lora_bench.py}
STEPS=${3:-4}
METHOD=${4:-lora}
REPEATS=${5:-1}
cd "$(dirname "$0")/.."
grep -q avx512_bf16 /proc/cpuinfo || echo "note: this CPU has no avx512_bf16; the vdpbf16ps row runs the portable path" >&2
cargo build --release --example bench_train_step --bin runner >/dev/null
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
printf 'runner.model.load("smollm2-135m-instruct"):save_pretrained(runner.params.out)\n' > "$TMP/save.lua"
./target/release/runner "$TMP/save.lua" --set out="$TMP/model" --results "$TMP/results" --trust >/dev/null
BENCH=./target/release/examples/bench_train_step
AMX=$(grep -q amx_bf16 /proc/cpuinfo && echo 1 || echo 0)
for _ in $(seq "$REPEATS"); do
  echo "# runner f32"; $BENCH "$METHOD" 4 256 "$STEPS"
  [ "${PORTABLE:-1}" = 1 ] && { echo "# runner bf16, no matrix unit"; RUNNER_AMX=0 RUNNER_BF16_DOT=0 RUNNER_BENCH_PRECISION=bf16 $BENCH "$METHOD" 4 256 "$STEPS"; }
  echo "# runner bf16, vdpbf16ps"; RUNNER_AMX=0 RUNNER_BENCH_PRECISION=bf16 $BENCH "$METHOD" 4 256 "$STEPS"
  [ "$AMX" = 1 ] && { echo "# runner bf16, AMX"; RUNNER_BENCH_PRECISION=bf16 $BENCH "$METHOD" 4 256 "$STEPS"; }
  echo "# PyTorch + PEFT f32"; "$PY" "$REF" "$TMP/model" "$METHOD" 4 256 "$STEPS"
  [ "$AMX" = 1 ] && { echo "# PyTorch + PEFT bf16 autocast, AVX512_BF16 only"; ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 "$PY" scripts/torch_bench.py "$TMP/model" "$METHOD" bf16 cpu 4 256 "$STEPS"; }
  echo "# PyTorch + PEFT bf16 autocast"; "$PY" scripts/torch_bench.py "$TMP/model" "$METHOD" bf16 cpu 4 256 "$STEPS"
done
