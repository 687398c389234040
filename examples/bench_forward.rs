//! Forward-pass throughput on SmolLM2-135M-Instruct: batch 4 × 256 random tokens, f32, flex,
//! no autodiff. One warm-up pass, then the median of 5.
//!
//!     cargo run --release --features wgpu,cuda --example bench_forward [MODEL] [BATCH] [SEQ] [RUNS]
//!
//! scripts/bench_forward.py measures transformers on the same GGUF, dequantized the same way.

use std::time::Instant;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use rand::{Rng, SeedableRng};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let model_name = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("smollm2-135m-instruct");
    let batch: usize = args.get(2).map_or(Ok(4), |s| s.parse())?;
    let seq: usize = args.get(3).map_or(Ok(256), |s| s.parse())?;
    let runs: usize = args.get(4).map_or(Ok(5), |s| s.parse())?;
    let device = Default::default();
    let p = runner::pretrained::load::<Flex>(model_name, &device)?;
    let vocab = p.model.config.vocab_size;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let ids: Vec<i64> = (0..batch * seq)
        .map(|_| rng.random_range(0..vocab as i64))
        .collect();
    let input = Tensor::<Flex, 2, Int>::from_data(TensorData::new(ids, [batch, seq]), &device);
    let mut times = Vec::new();
    for i in 0..=runs {
        let start = Instant::now();
        let logits = p.model.forward(input.clone(), None);
        let _ = logits.into_data(); // wait for the result
        let t = start.elapsed().as_secs_f64();
        if i > 0 {
            times.push(t);
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[times.len() / 2];
    println!(
        "{{\"impl\": \"runner (burn flex)\", \"batch\": {batch}, \"seq\": {seq}, \"median_s\": {median:.3}, \"tokens_per_s\": {:.0}}}",
        (batch * seq) as f64 / median
    );
    Ok(())
}
