//! A PPO iteration's time and peak memory on SmolLM2-135M-Instruct, the runner half of
//! `scripts/bench_ppo_trl.py` (TRL 0.25's `PPOTrainer`): one base model carries the policy, the
//! value function and the reward model as LoRA adapters (r 8, alpha 16, q_proj and v_proj; the
//! value and reward adapters with their own score heads), and the reference is the policy with
//! adapters disabled, so every weight matrix exists once. BATCH random prompts of PROMPT_LEN
//! tokens; responses of RESPONSE_LEN tokens sampled at temperature 1 (no EOS stops them);
//! kl_coef 0.05 (k1), 4 PPO epochs of one minibatch, AdamW at 5e-5, f32. Two iterations:
//! the first is a warm-up, the second is timed; peak RSS over both.
//!
//!     cargo run --release --example bench_ppo_step [BATCH] [PROMPT_LEN] [RESPONSE_LEN] [MODEL]
//!
//! MODEL `random-smollm2` is a random model of SmolLM2-135M's shape.
//! scripts/bench_ppo_step.sh runs both stacks side by side.

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use rand::{Rng, SeedableRng};
use runner::model::{Llama, LlamaConfig};
use runner::peft::lora::LoraConfig;
use runner::peft::{Method, Targets};
use runner::train::rl::{Completions, PpoConfig, PpoTrainer};
use runner::train::{AdamWConfig, Schedule, TrainError, Trainer};

type B = Autodiff<Flex>;

/// The reward adapter's score of each prompt + response, read at its last token.
fn reward_scores(model: &Llama<B>, batch: &Completions) -> Result<Vec<f64>, TrainError> {
    let mut rm = model.detached();
    runner::peft::set_active(&mut rm, Some("reward"))
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    let (ids, _, width) = batch.training_rows();
    let lengths: Vec<usize> = batch
        .prompts
        .iter()
        .zip(&batch.completions)
        .map(|(p, c)| p.len() + c.len())
        .collect();
    let input =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch.len(), width]), &rm.device);
    let scores = rm
        .scores(input, &lengths, None)
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    Ok(scores.into_data().convert::<f64>().to_vec().expect("f64"))
}

fn main() -> anyhow::Result<()> {
    runner::memory::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: usize| args.get(i).map_or(Ok(d), |s| s.parse());
    let batch = arg(1, 4)?;
    let prompt_len = arg(2, 64)?;
    let response_len = arg(3, 64)?;
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
    model.add_score_head(42)?;
    for name in ["reward", "value", "policy"] {
        Method::Lora(LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: Targets::names(&["q_proj", "v_proj"]),
            ..Default::default()
        })
        .attach(&mut model, name)?;
    }
    runner::memory::reset_peak();
    let rss_before_mb = runner::memory::peak_rss_bytes().unwrap_or(0) / (1 << 20);
    let vocab = model.config.vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            (0..prompt_len)
                .map(|_| rng.random_range(3..vocab))
                .collect()
        })
        .collect();
    let trainer = Trainer::<B>::new(
        AdamWConfig {
            lr: 5e-5,
            ..Default::default()
        },
        Schedule::default(),
        0,
    )?;
    let config = PpoConfig {
        response_length: response_len,
        temperature: 1.0,
        ..Default::default()
    };
    let mut ppo = PpoTrainer::new(trainer, config, &model, "value", None)?;
    let first = ppo.step(&mut model, &prompts, |_, _| false, reward_scores)?;
    let start = Instant::now();
    let second = ppo.step(&mut model, &prompts, |_, _| false, reward_scores)?;
    let dt = start.elapsed().as_secs_f64();
    let peak_mb = runner::memory::peak_rss_bytes().unwrap_or(0) / (1 << 20);
    let mean_len = second.metrics.mean_length;
    println!(
        "{{\"impl\": \"runner\", \"mode\": \"lora\", \"model\": \"{model_name}\", \"batch\": {batch}, \"prompt_len\": {prompt_len}, \"response_len\": {response_len}, \"num_ppo_epochs\": 4, \"s_per_iteration\": {dt:.3}, \"generation_s\": {:.3}, \"peak_rss_mb\": {peak_mb}, \"rss_before_mb\": {rss_before_mb}, \"models_in_memory\": 1, \"mean_response_len\": {mean_len:.1}, \"kl_first\": {}}}",
        second.metrics.generation_seconds, first.metrics.kl
    );
    Ok(())
}
