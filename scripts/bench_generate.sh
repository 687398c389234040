#!/usr/bin/env bash
# Batched sampled generation throughput, runner against transformers' generate, side by side
# on SmolLM2-135M-Instruct (f32; BATCH left-padded prompts of up to PROMPT_LEN tokens,
# NEW_TOKENS new tokens each, temperature 1, KV cache). Both stacks use every core.
#
#   scripts/bench_generate.sh PYTHON [BATCH] [PROMPT_LEN] [NEW_TOKENS] [REPEATS]
#
# PYTHON is a virtualenv's python with torch and transformers. runner dequantizes the GGUF
# once and saves it as a Hugging Face directory for transformers. Each run prints one JSON
# line; a table follows.
set -euo pipefail
PY=${1:?usage: scripts/bench_generate.sh PYTHON [BATCH] [PROMPT_LEN] [NEW_TOKENS] [REPEATS]}
BATCH=${2:-8}
PROMPT=${3:-64}
NEW=${4:-64}
REPEATS=${5:-3}
cd "$(dirname "$0")/.."
cargo build --release --example bench_generate --bin runner >/dev/null
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
printf 'runner.model.load("smollm2-135m-instruct"):save_pretrained(runner.params.out)\n' > "$TMP/save.lua"
./target/release/runner "$TMP/save.lua" --set out="$TMP/model" --results "$TMP/results" --trust >/dev/null
LINES="$TMP/bench.jsonl"
./target/release/examples/bench_generate "$BATCH" "$PROMPT" "$NEW" "$REPEATS" | tee -a "$LINES"
"$PY" scripts/bench_generate_hf.py "$TMP/model" "$BATCH" "$PROMPT" "$NEW" "$REPEATS" | tee -a "$LINES"
"$PY" - "$LINES" <<'EOF_SUMMARY'
import json, sys
rows = {json.loads(l)["impl"]: json.loads(l) for l in open(sys.argv[1])}
ours, theirs = rows["runner"], rows["transformers"]
print("\n| stack | s per call | new tokens/s | peak RSS (MB) |")
print("|---|---|---|---|")
for name, r in (("runner", ours), ("transformers", theirs)):
    print(f"| {name} | {r['s_per_call']:.2f} | {r['tokens_per_s']:.1f} | {r['peak_rss_mb']} |")
print(f"\nrunner's tokens/s over transformers': {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x")
EOF_SUMMARY
