//! DPO training-step throughput on SmolLM2-135M-Instruct, the runner half of
//! `scripts/bench_dpo_trl.py` (TRL's `DPOTrainer`): PAIRS random pairs whose prompt+chosen and
//! prompt+rejected sequences are SEQ tokens each (prompt SEQ/2, completions SEQ/2), LoRA r=8
//! (alpha 16) on q_proj and v_proj, sigmoid loss with β 0.1, the reference being the policy
//! with its adapter disabled and computed every step (no precomputation), AdamW, f32;
//! 2 warm-up steps, then the mean over STEPS steps; peak RSS from the first step on.
//!
//!     cargo run --release --example bench_dpo_step [PAIRS] [SEQ] [STEPS] [MODEL]
//!
//! MODEL `random-smollm2` is a random model of SmolLM2-135M's shape.
//! scripts/bench_dpo_step.sh runs both stacks side by side.

use std::time::Instant;

use rand::{Rng, SeedableRng};

use burn::backend::{Autodiff, Flex};
use runner::data::pairs::{PairBatch, PairOptions, TokenizedPair};
use runner::model::{Llama, LlamaConfig};
use runner::peft::lora::LoraConfig;
use runner::peft::{Method, Targets};
use runner::train::dpo::{DpoConfig, DpoTrainer};
use runner::train::{AdamWConfig, Schedule, Trainer};

type B = Autodiff<Flex>;

fn main() -> anyhow::Result<()> {
    runner::memory::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let pairs: usize = args.get(1).map_or(Ok(4), |s| s.parse())?;
    let seq: usize = args.get(2).map_or(Ok(256), |s| s.parse())?;
    let steps: usize = args.get(3).map_or(Ok(4), |s| s.parse())?;
    let model_name = args
        .get(4)
        .map(String::as_str)
        .unwrap_or("smollm2-135m-instruct");
    let device = Default::default();
    let mut model = if model_name == "random-smollm2" {
        Llama::<B>::random(LlamaConfig::smollm2_135m(), 0, 0.02, &device)?
    } else {
        runner::pretrained::load::<B>(model_name, &device)?.model
    };
    Method::Lora(LoraConfig {
        rank: 8,
        alpha: 16.0,
        targets: Targets::names(&["q_proj", "v_proj"]),
        ..Default::default()
    })
    .attach(&mut model, "default")?;
    // Right after the reset, the peak is the current RSS: the model as loaded.
    runner::memory::reset_peak();
    let rss_before_mb = runner::memory::peak_rss_bytes().unwrap_or(0) / (1 << 20);
    let vocab = model.config.vocab_size as i64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut random =
        |n: usize| -> Vec<i64> { (0..n).map(|_| rng.random_range(3..vocab)).collect() };
    let half = seq / 2;
    let data: Vec<TokenizedPair> = (0..pairs)
        .map(|_| TokenizedPair {
            prompt_ids: random(half),
            chosen_ids: random(seq - half),
            rejected_ids: random(seq - half),
            margin: None,
        })
        .collect();
    let refs: Vec<&TokenizedPair> = data.iter().collect();
    let opts = PairOptions {
        max_prompt_length: None,
        max_completion_length: None,
        max_length: None,
        ..PairOptions::default()
    };
    let batch = PairBatch::collate(&refs, &opts);
    let trainer = Trainer::<B>::new(
        AdamWConfig {
            lr: 5e-6,
            ..Default::default()
        },
        Schedule::default(),
        0,
    )?;
    let mut dpo = DpoTrainer::new(trainer, DpoConfig::default(), &model, None)?;
    let first = dpo.step(&mut model, &batch)?;
    dpo.step(&mut model, &batch)?;
    let start = Instant::now();
    for _ in 0..steps {
        dpo.step(&mut model, &batch)?;
    }
    let dt = start.elapsed().as_secs_f64() / steps as f64;
    let peak_mb = runner::memory::peak_rss_bytes().unwrap_or(0) / (1 << 20);
    println!(
        "{{\"impl\": \"runner\", \"method\": \"dpo_lora\", \"pairs\": {pairs}, \"seq\": {seq}, \"steps\": {steps}, \"s_per_step\": {dt:.3}, \"tokens_per_s\": {:.1}, \"peak_rss_mb\": {peak_mb}, \"rss_before_mb\": {rss_before_mb}, \"loss_first\": {:.6}}}",
        (2 * pairs * seq) as f64 / dt,
        first.metrics.loss
    );
    Ok(())
}
