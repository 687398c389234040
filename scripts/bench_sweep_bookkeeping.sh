#!/usr/bin/env bash
# The sweep engine's own cost per trial: a sweep of trivial trials (grid x = 1..N, each
# returning { y = x }) at several sizes, then a rerun of the finished sweep (every trial
# reused). Prints wall seconds and milliseconds per trial.
#   scripts/bench_sweep_bookkeeping.sh [RUNNER_BINARY] [SIZES...]
# Default binary: target/release/runner; default sizes: 1000 10000 100000.
set -euo pipefail
runner=$(realpath "${1:-target/release/runner}")
shift || true
sizes=("${@:-1000 10000 100000}")
read -r -a sizes <<< "${sizes[*]}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/trivial.lua" <<'LUA'
local n = runner.params.n
local xs = {}
for i = 1, n do xs[i] = i end
runner.sweep{
  name = "trivial",
  grid = { x = xs },
  trial = function(p) return { y = p.x } end,
}
LUA
cd "$work"
printf '%-8s %-9s %10s %12s\n' trials run seconds ms/trial
for n in "${sizes[@]}"; do
  rm -rf results
  for run in fresh resume; do
    start=$(date +%s.%N)
    "$runner" trivial.lua --set "n=$n" > /dev/null 2>&1
    end=$(date +%s.%N)
    awk -v n="$n" -v r="$run" -v s="$start" -v e="$end" \
      'BEGIN { printf "%-8d %-9s %10.2f %12.3f\n", n, r, e - s, 1000 * (e - s) / n }'
  done
  rows=$(($(wc -l < results/trivial/trials.csv) - 1))
  [ "$rows" -eq "$n" ] || { echo "trials.csv has $rows rows, expected $n" >&2; exit 1; }
done
