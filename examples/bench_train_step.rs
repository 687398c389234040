//! Training-step throughput on SmolLM2-135M-Instruct, the runner half of
//! `../shared/reference/lora_bench.py` (PyTorch + PEFT): random token ids with labels = ids,
//! AdamW lr 2e-4, f32; 2 warm-up steps, then the mean over STEPS steps; peak RSS from the
//! first training step on (the model is loaded and set up before the count starts), and on a
//! GPU the peak of device memory in use.
//!
//!     cargo run --release --example bench_train_step [lora|lora_all|full|qlora|qlora_all] [BATCH] [SEQ] [STEPS] [MODEL] [DEVICE]
//!
//! `qlora` and `qlora_all` quantize the projections to NF4 (block 64, double quantization)
//! before attaching the same LoRA adapters as `lora` and `lora_all`.
//!
//! `RUNNER_BENCH_CHECKPOINTING=1` turns on activation checkpointing (the memory/speed trade);
//! `RUNNER_BENCH_PRECISION=bf16` (or fp16) trains in mixed precision;
//! `RUNNER_BENCH_OFFLOAD=1` keeps AdamW's moments in host memory (GPU runs).
//!
//! `tflops` is the step's matrix-product arithmetic (see [`step_flops`]) over its time, for
//! model FLOP utilisation against a device's peak.
//!
//! MODEL `random-smollm2` is a random model of SmolLM2-135M's shape (for machines without the
//! weights); DEVICE is flex (default), wgpu or cuda (built with that feature).
//!
//! scripts/bench_train_step.sh runs both stacks side by side.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use rand::{Rng, SeedableRng};

use runner::backend::{DeviceKind, WithBackend, dispatch};

use runner::data::Batch;
use runner::model::{Llama, LlamaConfig};
use runner::peft::lora::LoraConfig;
use runner::peft::{Method, Targets};
use runner::train::{AdamWConfig, Schedule, Trainer};

fn main() -> anyhow::Result<()> {
    runner::memory::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let kind: DeviceKind = args
        .get(6)
        .map_or(Ok(DeviceKind::Flex), |s| s.parse())
        .map_err(anyhow::Error::msg)?;
    dispatch(kind, Bench(args))?
}

struct Bench(Vec<String>);

impl WithBackend for Bench {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device, kind: DeviceKind) -> anyhow::Result<()> {
        bench::<B>(&self.0, device, kind)
    }
}

fn bench<B: AutodiffBackend>(
    args: &[String],
    device: B::Device,
    kind: DeviceKind,
) -> anyhow::Result<()> {
    let method = args.get(1).map(String::as_str).unwrap_or("lora");
    let batch: usize = args.get(2).map_or(Ok(4), |s| s.parse())?;
    let seq: usize = args.get(3).map_or(Ok(256), |s| s.parse())?;
    let steps: usize = args.get(4).map_or(Ok(4), |s| s.parse())?;
    let model_name = args
        .get(5)
        .map(String::as_str)
        .unwrap_or("smollm2-135m-instruct");
    let mut model = if model_name == "random-smollm2" {
        let config = LlamaConfig::smollm2_135m();
        Llama::<B>::random(config, 0, 0.02, &device)?
    } else {
        runner::pretrained::load::<B>(model_name, &device)?.model
    };
    let lora = |targets| {
        Method::Lora(LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets,
            ..Default::default()
        })
    };
    let spec = match method {
        "lora" | "qlora" => lora(Targets::names(&["q_proj", "v_proj"])),
        "lora_all" | "qlora_all" => lora(Targets::AllLinear),
        "full" => Method::Full,
        other => anyhow::bail!("unknown method {other} (lora, lora_all, full, qlora, qlora_all)"),
    };
    if method.starts_with("qlora") {
        runner::model::quantize::quantize_model(&mut model, runner::quant::QuantConfig::default())?;
    }
    spec.attach(&mut model, "default")?;
    // Peak memory of training only: memory that loading (and quantizing) freed is handed back.
    runner::memory::reset_peak();
    let vocab = model.config.vocab_size as i64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let ids: Vec<i64> = (0..batch * seq)
        .map(|_| rng.random_range(0..vocab))
        .collect();
    let data = Batch {
        input_ids: ids.clone(),
        labels: ids,
        batch,
        seq,
        segments: None,
    };
    let precision = match std::env::var("RUNNER_BENCH_PRECISION") {
        Ok(p) => runner::kernels::precision::Precision::parse(&p)?,
        Err(_) => Default::default(),
    };
    let options = runner::train::TrainOptions {
        checkpointing: std::env::var("RUNNER_BENCH_CHECKPOINTING").is_ok_and(|v| v == "1"),
        precision,
        ..Default::default()
    };
    let offload = std::env::var("RUNNER_BENCH_OFFLOAD").is_ok_and(|v| v == "1");
    let mut trainer = Trainer::<B>::with_options(
        AdamWConfig {
            lr: 2e-4,
            offload,
            ..Default::default()
        },
        Schedule::default(),
        options,
        0,
    )?;
    trainer.step(&mut model, &data)?;
    trainer.step(&mut model, &data)?;
    let start = Instant::now();
    for _ in 0..steps {
        trainer.step(&mut model, &data)?;
    }
    let dt = start.elapsed().as_secs_f64() / steps as f64;
    if std::env::var("RUNNER_BENCH_PHASES").is_ok() {
        // Where one step's time goes: forward to the final hidden states, head + loss, backward.
        let t0 = Instant::now();
        let hidden = model.hidden_states(runner::train::input_tensor(&data, &model.device), None);
        let _ = hidden.clone().into_data();
        let t1 = Instant::now();
        let targets = runner::train::head_loss::next_token_targets(&data.labels, batch, seq);
        let count = targets
            .iter()
            .filter(|&&t| t != runner::data::IGNORE_INDEX)
            .count();
        let head = model.head().clone();
        let (_, surrogate) = runner::train::head_loss::training_loss(
            hidden,
            &head.value,
            head.trainable,
            &targets,
            count,
            1.0,
            model.config.final_logit_softcapping,
        );
        let t2 = Instant::now();
        let _grads = surrogate.backward();
        let t3 = Instant::now();
        eprintln!(
            "forward {:.2}s, head + loss {:.2}s, backward {:.2}s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64()
        );
    }
    let peak_mb = runner::memory::peak_rss_bytes().unwrap_or(0) / (1 << 20);
    // GPU runs: the device memory in use at its peak (the trainer samples it each step).
    let device_mb = runner::memory::peak_device_bytes().map_or(String::new(), |b| {
        format!(", \"peak_device_mb\": {}", b / (1 << 20))
    });
    let trainable = model.param_count().trainable;
    let tflops = step_flops(&model.config, trainable, method != "full", batch, seq) / dt / 1e12;
    println!(
        "{{\"impl\": \"runner\", \"device\": \"{kind}\", \"method\": \"{method}\", \"precision\": \"{}\", \"offload\": {offload}, \"batch\": {batch}, \"seq\": {seq}, \"s_per_step\": {dt:.3}, \"tokens_per_s\": {:.1}, \"tflops\": {tflops:.3}, \"trainable\": {}, \"peak_rss_mb\": {peak_mb}{device_mb}}}",
        precision.name(),
        (batch * seq) as f64 / dt,
        trainable
    );
    Ok(())
}

/// The matrix-product arithmetic of one training step (2 FLOPs a multiply-add), counted as
/// model FLOPs are: attention scores over the whole `seq × seq` square (the causal half that a
/// kernel may skip still counts), element-wise work left out. The forward pass; the gradients
/// of the activations (the same products again); the weight gradients of the `trainable`
/// parameters (2 FLOPs a parameter a token); and for adapters (`adapters`: the trainable
/// parameters are extra matrices beside frozen ones), their own forward and input-gradient
/// products, 4 more.
fn step_flops(c: &LlamaConfig, trainable: usize, adapters: bool, batch: usize, seq: usize) -> f64 {
    let tokens = (batch * seq) as f64;
    let (d, ffn) = (c.hidden_size as f64, c.intermediate_size as f64);
    let (q, kv) = (
        (c.num_attention_heads * c.head_dim()) as f64,
        (c.num_key_value_heads * c.head_dim()) as f64,
    );
    let layers = c.num_hidden_layers as f64;
    // q, k, v, o, gate, up, down.
    let weights = (d * q + 2.0 * d * kv + q * d + 3.0 * d * ffn) * layers;
    let head = d * c.vocab_size as f64;
    let attention = 2.0 * 2.0 * batch as f64 * (seq * seq) as f64 * q * layers;
    let forward = 2.0 * tokens * (weights + head) + attention;
    let per_parameter = if adapters { 6.0 } else { 2.0 };
    2.0 * forward + per_parameter * tokens * trainable as f64
}
