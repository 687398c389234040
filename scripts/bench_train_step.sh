#!/usr/bin/env bash
# Training-step throughput of runner and of PyTorch + transformers + PEFT, side by side, on
# SmolLM2-135M-Instruct (f32, batch 4 x 256 random tokens, AdamW): LoRA r=8 on q,v; LoRA r=8
# on all linear layers; full fine-tuning. Then the same in bf16 mixed precision: runner's
# `precision = "bf16"` (AMX tiles where the CPU has them) against PyTorch's CPU autocast
# (scripts/torch_bench.py).
#
#   scripts/bench_train_step.sh PYTHON [LORA_BENCH_PY] [STEPS] [REPEATS]
#
# PYTHON is a virtualenv's python with torch, transformers, peft, gguf and safetensors.
# LORA_BENCH_PY defaults to ../shared/reference/lora_bench.py (the PyTorch half). runner
# dequantizes the GGUF once and saves it as a Hugging Face directory for PyTorch
# (transformers will not save a GGUF-loaded model); runner's own benchmark loads the GGUF.
# Prints one JSON line per stack and method as it goes, then a side-by-side table: each
# stack's median s/step and peak RSS, and runner's speed over PyTorch's (PyTorch's s/step
# over runner's) per pair and of the medians. On a shared or virtual machine the speed of one
# run drifts by 10-15%, so each pair runs back to back and REPEATS pairs interleave the
# methods. BF16=0 skips the mixed-precision half; METHODS="lora full" runs only those.
set -euo pipefail
PY=${1:?usage: scripts/bench_train_step.sh PYTHON [LORA_BENCH_PY] [STEPS] [REPEATS]}
REF=${2:-../shared/reference/lora_bench.py}
STEPS=${3:-4}
REPEATS=${4:-1}
cd "$(dirname "$0")/.."
cargo build --release --features wgpu,cuda --example bench_train_step --bin runner >/dev/null
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
printf 'runner.model.load("smollm2-135m-instruct"):save_pretrained(runner.params.out)\n' > "$TMP/save.lua"
./target/release/runner "$TMP/save.lua" --set out="$TMP/model" --results "$TMP/results" --trust >/dev/null
HF="$TMP/model"
LINES="$TMP/bench.jsonl"
for _ in $(seq "$REPEATS"); do
  for method in ${METHODS:-lora lora_all full}; do
    ./target/release/examples/bench_train_step "$method" 4 256 "$STEPS" | tee -a "$LINES"
    "$PY" "$REF" "$HF" "$method" 4 256 "$STEPS" | tee -a "$LINES"
  done
  [ "${BF16:-1}" = 0 ] && continue
  for method in ${METHODS:-lora lora_all full}; do
    RUNNER_BENCH_PRECISION=bf16 ./target/release/examples/bench_train_step "$method" 4 256 "$STEPS" | tee -a "$LINES"
    "$PY" scripts/torch_bench.py "$HF" "$method" bf16 cpu 4 256 "$STEPS" | tee -a "$LINES"
  done
done
"$PY" - "$LINES" <<'EOF_SUMMARY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    stack = r.get("impl", "pytorch")
    precision = "bf16" if "bf16" in r.get("precision", "fp32") else "fp32"
    runs.setdefault((r["method"], precision), {}).setdefault(stack, []).append(r)
print("\n| method | precision | runner s/step | PyTorch s/step | runner over PyTorch (median; each pair) | runner peak RSS | PyTorch peak RSS |")
print("|---|---|---|---|---|---|---|")
for (method, precision), by in runs.items():
    ours, theirs = by.get("runner", []), by.get("pytorch", [])
    if not ours or not theirs:
        continue
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    pairs = ", ".join(f"{t['s_per_step'] / o['s_per_step']:.2f}" for o, t in zip(ours, theirs))
    print(f"| {method} | {precision} | {med(ours, 's_per_step'):.2f} | {med(theirs, 's_per_step'):.2f} | "
          f"{med(theirs, 's_per_step') / med(ours, 's_per_step'):.2f}x ({pairs}) | "
          f"{med(ours, 'peak_rss_mb'):.0f} MB | {med(theirs, 'peak_rss_mb'):.0f} MB |")
EOF_SUMMARY
