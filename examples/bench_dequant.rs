//! Dequantization throughput of one SmolLM2 MLP weight (`[1536, 576]`), the work QLoRA's
//! matmul adds per projection in the forward and the backward pass.
//!
//!     cargo run --release --example bench_dequant

use std::time::Instant;

use runner::quant::{QuantConfig, QuantDtype, QuantizedTensor};

fn main() -> anyhow::Result<()> {
    let (rows, cols) = (1536, 576);
    let values: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    for dtype in QuantDtype::ALL {
        for double in [false, true] {
            let q = QuantizedTensor::quantize(
                &values,
                &[rows, cols],
                QuantConfig {
                    dtype,
                    block: 64,
                    double,
                },
            )?;
            let mut out = vec![0.0f32; rows * cols];
            let reps = 50;
            let start = Instant::now();
            for _ in 0..reps {
                q.dequantize_into(&mut out);
            }
            let dt = start.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{dtype} double={double}: {:.2} ms per weight, {:.0} M values/s",
                dt * 1e3,
                (rows * cols) as f64 / dt / 1e6
            );
        }
    }
    Ok(())
}
