#!/usr/bin/env bash
# A PPO iteration's time and peak memory, runner against TRL 0.25's PPOTrainer, side by side on
# SmolLM2-135M-Instruct (f32; BATCH prompts of PROMPT_LEN tokens, RESPONSE_LEN-token responses,
# 4 PPO epochs). runner: policy, value and reward as LoRA adapters of one base, the reference
# being the policy with adapters disabled. TRL: its four models (full), and the LoRA policy
# with the value and reward models (lora).
#
#   scripts/bench_ppo_step.sh PYTHON [BATCH] [PROMPT_LEN] [RESPONSE_LEN]
#
# PYTHON is the python of a virtualenv with trl==0.25.1, peft, transformers and torch. runner
# dequantizes the GGUF once and saves it as a Hugging Face directory for TRL. Each run prints
# one JSON line; a table follows.
set -euo pipefail
PY=${1:?usage: scripts/bench_ppo_step.sh PYTHON [BATCH] [PROMPT_LEN] [RESPONSE_LEN]}
BATCH=${2:-4}
PROMPT=${3:-64}
RESPONSE=${4:-64}
cd "$(dirname "$0")/.."
cargo build --release --example bench_ppo_step --bin runner >/dev/null
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
printf 'runner.model.load("smollm2-135m-instruct"):save_pretrained(runner.params.out)\n' > "$TMP/save.lua"
./target/release/runner "$TMP/save.lua" --set out="$TMP/model" --results "$TMP/results" --trust >/dev/null
LINES="$TMP/bench.jsonl"
./target/release/examples/bench_ppo_step "$BATCH" "$PROMPT" "$RESPONSE" | tee -a "$LINES"
for mode in lora full; do
  "$PY" scripts/bench_ppo_trl.py "$TMP/model" "$mode" "$BATCH" "$PROMPT" "$RESPONSE" | tee -a "$LINES"
done
"$PY" - "$LINES" <<'EOF_SUMMARY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
ours = next(r for r in rows if r["impl"] == "runner")
print("\n| stack | models in memory | s/iteration | peak RSS (MB) | RSS before training (MB) | runner's peak / this |")
print("|---|---|---|---|---|---|")
for r in rows:
    name = "runner (LoRA policy, value, reward on one base)" if r["impl"] == "runner" else f"TRL {r['mode']}"
    print(f"| {name} | {r['models_in_memory']} | {r['s_per_iteration']:.1f} | {r['peak_rss_mb']} | {r['rss_before_mb']} | {ours['peak_rss_mb'] / r['peak_rss_mb']:.2f} |")
EOF_SUMMARY
