#!/usr/bin/env bash
# The LoRA paper's Figures 3 and 4 from the adapters that recipes/lora_table6.lua saved:
# φ(i, j) between q,v adapters of rank 8 and rank 64 (Figure 3), and between two seeds at rank
# 64 against Gaussian matrices of the same shapes (Figure 4), for the A factor (the paper's) and
# the B factor, at the middle layer. Writes the heatmaps and the φ tables (CSV) under
# docs/images/lora_paper/.
#   scripts/lora_paper_figures.sh [RUNNER] [TASK] [LAYER]   (default: target/release/runner instruct 15)
set -euo pipefail
cd "$(dirname "$0")/.."

runner=${1:-target/release/runner}
task=${2:-instruct}
layer=${3:-15}
sweep=results/lora_table6
out=docs/images/lora_paper

# The trial id of the q,v trial at a rank and seed; columns are found by their header names, so
# a grid with more or fewer parameters still reads right.
trial() {
  local id
  id=$(awk -F, -v r="$1" -v s="$2" -v t="$task" '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    $col["rank"] == r && $col["seed"] == s && $col["targets"] == "qv" && $col["task"] == t &&
      $col["status"] == "ok" { print $col["trial_id"] }' "$sweep/trials.csv")
  [ -n "$id" ] || { echo "no finished q,v trial at rank $1, seed $2, task $task in $sweep" >&2; exit 1; }
  echo "$id"
}

# Each adapter under a name that says what it is: the heatmaps label their axes by folder.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
names=$tmp/qv_$task
mkdir "$names"
link() { ln -s "$PWD/$sweep/$(trial "$1" "$2")/adapter" "$names/r$1_seed$2"; }
link 8 1
link 64 1
link 64 2

mkdir -p "$out"
for proj in q v; do
  module=model.layers.$layer.self_attn.${proj}_proj
  for side in A B; do
    # Figure 3: rank 8 against rank 64, same seed, every direction of both.
    "$runner" similarity "$names/r8_seed1" "$names/r64_seed1" --module "$module" --side "$side" \
      --out "$out/fig3_${proj}_$side" | grep -v '^wrote ' > "$out/fig3_${proj}_$side.csv"
    # Figure 4: two seeds at rank 64, the top 8 directions, with the Gaussian baseline.
    "$runner" similarity "$names/r64_seed1" "$names/r64_seed2" --module "$module" --side "$side" \
      --max 8 --random --out "$out/fig4_${proj}_$side" | grep -v '^wrote ' > "$out/fig4_${proj}_$side.csv"
  done
done
rm -f "$out"/*/*.svg
echo "wrote $out"
