#!/usr/bin/env python3
"""The GPU run's side-by-side table (scripts/device_check.sh): runner (with and without Burn's
fusion) beside PyTorch + PEFT for each method, precision and shape, with tokens/s, MFU and peak
device memory.

    python3 scripts/device_summary.py OUT_DIR/bench.jsonl OUT_DIR/gpu.txt

MFU is the step's matrix-product FLOPs per second (the `tflops` both benchmarks report, counted
the same way) over the GPU's dense peak: TF32 tensor cores for f32 steps (both stacks use them),
bf16 for bf16 ones. GPUs missing from PEAKS get no MFU column values.
"""
import json
import sys

# Dense tensor-core peaks in TFLOP/s from NVIDIA's data sheets: (TF32, bf16).
PEAKS = {
    "H200": (494.7, 989.4),
    "H100 80GB HBM3": (494.7, 989.4),  # SXM
    "H100 PCIe": (378.0, 756.0),
    "H100 NVL": (417.5, 835.0),
    "A100": (156.0, 312.0),
    "L40S": (183.0, 362.05),
    "L4": (60.0, 121.0),
}


def peak_for(gpu_name):
    best = None
    for key, peak in PEAKS.items():
        if key in gpu_name and (best is None or len(key) > len(best[0])):
            best = (key, peak)
    return best[1] if best else None


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    gpu = open(sys.argv[2]).read().strip().splitlines()
    name = gpu[1].split(",")[0].strip() if len(gpu) > 1 else "unknown GPU"
    peak = peak_for(name)
    failed = [r for r in rows if "failed" in r]
    rows = [r for r in rows if "failed" not in r]

    def key(r):
        precision = "bf16" if r.get("precision", "").startswith("bf16") else "f32"
        return (r["method"], precision, r["batch"], r["seq"], r.get("offload", False))

    cells = {}
    for r in rows:
        who = r["impl"] if r["impl"] == "pytorch" else ("runner" if r.get("fused", True) else "runner_unfused")
        cells.setdefault(key(r), {})[who] = r

    def mfu(r, precision):
        if peak is None or r is None:
            return "–"
        return f"{100 * r['tflops'] / peak[precision == 'bf16']:.1f}%"

    def tok(r):
        return f"{r['tokens_per_s']:,.0f}" if r else "–"

    def mem(r):
        return f"{r['peak_device_mb']:,}" if r and "peak_device_mb" in r else "–"

    print(f"GPU: {name}" + ("" if peak else " (no peak figures: MFU left out)"))
    print()
    print("| method | precision | batch × seq | runner tok/s | MFU | peak MB | runner without fusion tok/s "
          "| PyTorch + PEFT tok/s | MFU | peak MB | runner / PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (method, precision, batch, seq, offload), c in cells.items():
        r, u, p = c.get("runner"), c.get("runner_unfused"), c.get("pytorch")
        ratio = f"{r['tokens_per_s'] / p['tokens_per_s']:.2f}×" if r and p else "–"
        label = method + (" (optimizer offloaded)" if offload else "")
        print(f"| {label} | {precision} | {batch} × {seq} | {tok(r)} | {mfu(r, precision)} | {mem(r)} "
              f"| {tok(u)} | {tok(p)} | {mfu(p, precision)} | {mem(p)} | {ratio} |")
    for f in failed:
        print(f"\nfailed: {f['impl']} {f['failed']}")


if __name__ == "__main__":
    main()
