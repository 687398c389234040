#!/usr/bin/env bash
# The GPU checks in one run, for a machine with an NVIDIA GPU and no Rust toolchain (the
# `device` tool's H200): the CUDA tests, then runner's training step against PyTorch's on the
# same shapes. Two halves:
#
#   scripts/device_check.sh prepare        # here: builds (release, features wgpu,cuda: Burn's
#                                          # fusion, CUDA's autotune), the benchmark once more
#                                          # without fusion, then strips and compresses them
#                                          # and the backends test binary into .device-bin/
#   scripts/device_check.sh run [OUT_DIR]  # there, carrying .device-bin: writes
#                                          # OUT_DIR/tests.txt and OUT_DIR/bench.jsonl
#
# `run` covers: flex against CUDA (logits, LoRA gradients), QLoRA's codes dequantized on the
# device, the trainer's device-memory peak and the offloaded optimizer's saving (the ignored
# tests of tests/backends.rs); runner's step (random SmolLM2-135M-shaped model, batch 4 × 256,
# 10 steps) for LoRA q,v, LoRA all-linear, full fine-tuning and QLoRA NF4 in f32, LoRA,
# full and QLoRA in bf16, full with the optimizer offloaded, LoRA q,v at 16 × 512; PyTorch + PEFT
# (scripts/torch_bench.py) on the same methods, shapes and precisions. Each command has
# its own time limit, so one hang costs one line. LoRA q,v, all-linear and full fine-tuning run
# again on the build without Burn's fusion ("fused": false), and a summary table ends the run:
# tokens/s, MFU (the step's matrix-product FLOPs against the GPU's dense peak) and peak device
# memory, runner beside PyTorch (OUT_DIR/summary.md). Environment overrides, for a dry run on
# another backend: DEVICE (cuda), BATCH/SEQ (4/256), STEPS (10), METHODS, TORCH (1; 0 skips
# PyTorch and the tests).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.device-bin

case "${1:-}" in
prepare)
  set -e
  cargo build --release --features wgpu,cuda --example bench_train_step
  # The same benchmark before Burn's fusion (a separate target folder keeps both builds).
  cargo build --release --no-default-features --features flex,wgpu,cuda --example bench_train_step --target-dir target/unfused
  cp target/unfused/release/examples/bench_train_step target/release/examples/bench_train_step_unfused
  # The integration tests are one binary; `run` selects the backend tests by name.
  test_bin=$(cargo test --release --features wgpu,cuda --test integration --no-run 2>&1 | grep -o 'target/release/deps/integration-[0-9a-f]*' | tail -1)
  [ -n "$test_bin" ] || { echo "no integration test binary was built" >&2; exit 1; }
  mkdir -p "$BIN"
  for f in target/release/examples/bench_train_step target/release/examples/bench_train_step_unfused "$test_bin"; do
    strip -o "$BIN/$(basename "$f" | sed 's/-[0-9a-f]*$//; s/^integration$/backends/')" "$f"
  done
  xz -f -T2 "$BIN/bench_train_step" "$BIN/bench_train_step_unfused" "$BIN/backends"
  ls -l "$BIN"
  ;;
run)
  OUT_DIR=${2:-${OUT:-results/device}}
  mkdir -p "$OUT_DIR" /tmp/device-bin
  for f in bench_train_step bench_train_step_unfused backends; do
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$BIN/$f.xz" "/tmp/device-bin/$f" || exit 1
    chmod +x "/tmp/device-bin/$f"
  done
  DEVICE=${DEVICE:-cuda}
  BATCH=${BATCH:-4} SEQ=${SEQ:-256} STEPS=${STEPS:-10}
  METHODS=${METHODS:-lora lora_all full qlora}
  TORCH=${TORCH:-1}
  (nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true) > "$OUT_DIR/gpu.txt"
  if [ "$TORCH" = 1 ]; then
    echo "== tests (ignored ones: CUDA)" | tee "$OUT_DIR/tests.txt"
    timeout 240 /tmp/device-bin/backends backends:: --ignored --test-threads 1 --nocapture 2>&1 | tee -a "$OUT_DIR/tests.txt"
  fi
  bench() { # [VAR=VALUE...] METHOD BATCH SEQ: runner's step, on one JSON line
    echo "== runner $*" >&2
    local label="$*" vars=() bin=${BENCH_BIN:-bench_train_step} fused=true
    [ "$bin" = bench_train_step ] || fused=false
    while [[ $1 == *=* ]]; do vars+=("$1"); shift; done
    timeout 150 env "${vars[@]}" "/tmp/device-bin/$bin" "$1" "$2" "$3" "$STEPS" random-smollm2 "$DEVICE" \
      | sed "s/}\$/, \"fused\": $fused}/" >> "$OUT_DIR/bench.jsonl"
    [ "${PIPESTATUS[0]}" = 0 ] || echo "{\"impl\": \"runner\", \"fused\": $fused, \"failed\": \"$label\"}" >> "$OUT_DIR/bench.jsonl"
  }
  torch_bench() { # METHOD PRECISION BATCH SEQ
    [ "$TORCH" = 1 ] || return 0
    echo "== pytorch $*" >&2
    timeout 150 python3 scripts/torch_bench.py random-smollm2 "$1" "$2" cuda "$3" "$4" "$STEPS" 2>>"$OUT_DIR/torch.stderr" >> "$OUT_DIR/bench.jsonl" \
      || echo "{\"impl\": \"pytorch\", \"failed\": \"$*\"}" >> "$OUT_DIR/bench.jsonl"
  }
  for m in $METHODS; do
    bench "$m" "$BATCH" "$SEQ"
    case $m in qlora*) ;; *) torch_bench "$m" fp32 "$BATCH" "$SEQ" ;; esac
  done
  for m in lora full qlora; do
    case " $METHODS " in *" $m "*) ;; *) continue ;; esac
    bench RUNNER_BENCH_PRECISION=bf16 "$m" "$BATCH" "$SEQ"
    case $m in qlora) ;; *) torch_bench "$m" bf16 "$BATCH" "$SEQ" ;; esac
  done
  case " $METHODS " in *" full "*) bench RUNNER_BENCH_OFFLOAD=1 full "$BATCH" "$SEQ" ;; esac
  case " $METHODS " in *" lora "*)
    bench lora $((BATCH * 4)) $((SEQ * 2))
    torch_bench lora fp32 $((BATCH * 4)) $((SEQ * 2)) ;;
  esac
  # Before fusion: the same steps on the build without it.
  for m in lora lora_all full; do
    case " $METHODS " in *" $m "*) ;; *) continue ;; esac
    BENCH_BIN=bench_train_step_unfused bench "$m" "$BATCH" "$SEQ"
  done
  case " $METHODS " in *" lora "*) BENCH_BIN=bench_train_step_unfused bench RUNNER_BENCH_PRECISION=bf16 lora "$BATCH" "$SEQ" ;; esac
  python3 scripts/device_summary.py "$OUT_DIR/bench.jsonl" "$OUT_DIR/gpu.txt" | tee "$OUT_DIR/summary.md"
  ;;
*)
  echo "usage: scripts/device_check.sh prepare | run [OUT_DIR]" >&2
  exit 2
  ;;
esac
