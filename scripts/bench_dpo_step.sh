#!/usr/bin/env bash
# DPO training-step throughput and peak memory of runner and of TRL's DPOTrainer, side by
# side, on SmolLM2-135M-Instruct (f32; PAIRS pairs of SEQ-token sequences; LoRA r=8 on q,v;
# the reference = the policy with its adapter disabled, computed every step).
#
#   scripts/bench_dpo_step.sh PYTHON [PAIRS] [SEQ] [STEPS] [REPEATS]
#
# PYTHON is a virtualenv's python with torch, transformers, peft, trl, datasets and
# safetensors. runner dequantizes the GGUF once and saves it as a Hugging Face directory for
# TRL; runner's own benchmark loads the GGUF. The two stacks run back to back, REPEATS times
# interleaved; each prints one JSON line, and a table of medians follows.
set -euo pipefail
PY=${1:?usage: scripts/bench_dpo_step.sh PYTHON [PAIRS] [SEQ] [STEPS] [REPEATS]}
PAIRS=${2:-4}
SEQ=${3:-256}
STEPS=${4:-4}
REPEATS=${5:-1}
cd "$(dirname "$0")/.."
cargo build --release --example bench_dpo_step --bin runner >/dev/null
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
printf 'runner.model.load("smollm2-135m-instruct"):save_pretrained(runner.params.out)\n' > "$TMP/save.lua"
./target/release/runner "$TMP/save.lua" --set out="$TMP/model" --results "$TMP/results" --trust >/dev/null
LINES="$TMP/bench.jsonl"
for _ in $(seq "$REPEATS"); do
  ./target/release/examples/bench_dpo_step "$PAIRS" "$SEQ" "$STEPS" | tee -a "$LINES"
  "$PY" scripts/bench_dpo_trl.py "$TMP/model" "$PAIRS" "$SEQ" "$STEPS" | tee -a "$LINES"
done
"$PY" - "$LINES" <<'EOF_SUMMARY'
import json, statistics, sys
by = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    by.setdefault(r["impl"], []).append(r)
med = lambda rs, k: statistics.median(r[k] for r in rs)
ours, theirs = by["runner"], by["trl"]
print("\n| stack | s/step | tokens/s | peak RSS (MB) | RSS before training (MB) |")
print("|---|---|---|---|---|")
for name, rs in (("runner", ours), ("TRL", theirs)):
    print(f"| {name} | {med(rs, 's_per_step'):.2f} | {med(rs, 'tokens_per_s'):.0f} | {med(rs, 'peak_rss_mb'):.0f} | {med(rs, 'rss_before_mb'):.0f} |")
print(f"\nrunner's tokens/s over TRL's: {med(ours, 'tokens_per_s') / med(theirs, 'tokens_per_s'):.2f}x; "
      f"peak RSS runner/TRL: {med(ours, 'peak_rss_mb') / med(theirs, 'peak_rss_mb'):.2f}")
EOF_SUMMARY
