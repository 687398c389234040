//! Batched sampled generation throughput on SmolLM2-135M-Instruct, the runner half of
//! `scripts/bench_generate_hf.py` (transformers' `generate`): BATCH random prompts with ragged
//! lengths (row i has PROMPT_LEN − (i mod 4)·(PROMPT_LEN/8) tokens, padded on the left),
//! sampled at temperature 1 from the full vocabulary with the KV cache, NEW_TOKENS new tokens
//! per row (no EOS stops a row), f32; one warm-up call, then the median of REPEATS calls.
//!
//!     cargo run --release --example bench_generate [BATCH] [PROMPT_LEN] [NEW_TOKENS] [REPEATS] [MODEL]
//!
//! MODEL `random-smollm2` is a random model of SmolLM2-135M's shape.
//! scripts/bench_generate.sh runs both stacks side by side.

use std::time::Instant;

use burn::backend::Flex;
use rand::{Rng, SeedableRng};
use runner::generate::{GenerateOptions, generate_batch};
use runner::model::{Llama, LlamaConfig};

type B = Flex;

fn main() -> anyhow::Result<()> {
    runner::memory::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: usize| args.get(i).map_or(Ok(d), |s| s.parse());
    let batch = arg(1, 8)?;
    let prompt_len = arg(2, 64)?;
    let new_tokens = arg(3, 64)?;
    let repeats = arg(4, 3)?;
    let model_name = args
        .get(5)
        .map(String::as_str)
        .unwrap_or("smollm2-135m-instruct");
    let device = Default::default();
    let model = if model_name == "random-smollm2" {
        Llama::<B>::random(LlamaConfig::smollm2_135m(), 0, 0.02, &device)?
    } else {
        runner::pretrained::load::<B>(model_name, &device)?.model
    };
    let vocab = model.config.vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let lengths: Vec<usize> = (0..batch)
        .map(|i| prompt_len - (i % 4) * (prompt_len / 8))
        .collect();
    let prompts: Vec<Vec<u32>> = lengths
        .iter()
        .map(|&n| (0..n).map(|_| rng.random_range(3..vocab)).collect())
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: new_tokens,
        temperature: 1.0,
        ..Default::default()
    };
    let call = || -> anyhow::Result<f64> {
        let start = Instant::now();
        let out = generate_batch(&model, &prompts, &opts, |_, _| false)?;
        anyhow::ensure!(
            out.iter().all(|o| o.len() == new_tokens),
            "every row must have {new_tokens} new tokens"
        );
        Ok(start.elapsed().as_secs_f64())
    };
    call()?;
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| call())
        .collect::<anyhow::Result<_>>()?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let peak_mb = runner::memory::peak_rss_bytes().unwrap_or(0) / (1 << 20);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{{\"impl\": \"runner\", \"model\": \"{model_name}\", \"batch\": {batch}, \"prompt_len\": {prompt_len}, \"new_tokens\": {new_tokens}, \"prompt_lengths\": {lengths:?}, \"repeats\": {repeats}, \"s_per_call\": {median:.4}, \"tokens_per_s\": {:.1}, \"peak_rss_mb\": {peak_mb}, \"threads\": {threads}}}",
        (batch * new_tokens) as f64 / median
    );
    Ok(())
}
