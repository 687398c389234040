//! LoRA (Hu et al. 2021): `y = x·W + s·(x·A)·B`, with `s = alpha / r` (or `alpha / √r` for rsLoRA).
//!
//! A is kaiming-uniform (a = √5, as PyTorch's `nn.Linear` and PEFT) and B is zero, so a
//! fresh adapter leaves the model's output unchanged. The dense update `A·B` is never formed.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::model::init::{self, HostRng};
use crate::model::llama::LINEAR_TARGETS;
use crate::model::params::{Param, ParamVisitor, SetTrainable};
use crate::model::Llama;
use rand::Rng;

#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
    /// Scale by `alpha / √r` instead of `alpha / r`.
    pub rslora: bool,
    /// Seed of the A initialisation.
    pub seed: u64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { rank: 8, alpha: 16.0, dropout: 0.0, targets: vec!["q_proj".into(), "v_proj".into()], rslora: false, seed: 0 }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoraError {
    #[error("LoRA rank must be a positive integer (got {0})")]
    Rank(i64),
    #[error("LoRA alpha must be a positive finite number (got {0})")]
    Alpha(f64),
    #[error("LoRA dropout must be in [0, 1) (got {0})")]
    Dropout(f64),
    #[error("LoRA needs at least one target module")]
    NoTargets,
    #[error("unknown target module '{name}'{hint}; valid targets: {valid}")]
    UnknownTarget { name: String, hint: String, valid: String },
    #[error("LoRA rank {rank} exceeds the smaller side ({side}) of {module}")]
    RankTooLarge { rank: usize, side: usize, module: String },
    #[error("{0} already has a LoRA adapter")]
    AlreadyAttached(String),
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.rslora { self.alpha / (self.rank as f64).sqrt() } else { self.alpha / self.rank as f64 }
    }

    pub fn validate(&self) -> Result<(), LoraError> {
        if self.rank == 0 {
            return Err(LoraError::Rank(0));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(LoraError::Alpha(self.alpha));
        }
        if !(self.dropout >= 0.0 && self.dropout < 1.0) {
            return Err(LoraError::Dropout(self.dropout));
        }
        if self.targets.is_empty() {
            return Err(LoraError::NoTargets);
        }
        for t in &self.targets {
            if !LINEAR_TARGETS.contains(&t.as_str()) {
                let hint = super::closest(t, LINEAR_TARGETS).map(|c| format!(" (did you mean '{c}'?)")).unwrap_or_default();
                return Err(LoraError::UnknownTarget { name: t.clone(), hint, valid: LINEAR_TARGETS.join(", ") });
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `[d_in, r]` (PEFT's `lora_A.weight` transposed)
    pub a: Param<B, 2>,
    /// `[r, d_out]` (PEFT's `lora_B.weight` transposed)
    pub b: Param<B, 2>,
    pub scale: f64,
    pub dropout: f64,
}

impl<B: Backend> LoraAdapter<B> {
    pub fn new(d_in: usize, d_out: usize, rank: usize, scale: f64, dropout: f64, rng: &mut HostRng, device: &B::Device) -> Self {
        // kaiming_uniform_(a=√5) on a [r, d_in] weight: bound = 1/√d_in.
        let bound = 1.0 / (d_in as f64).sqrt();
        let a = init::tensor2::<B>(init::uniform_vec(rng, d_in * rank, bound), [d_in, rank], device);
        let b = Tensor::<B, 2>::zeros([rank, d_out], device);
        Self { a: Param::new(a, true), b: Param::new(b, true), scale, dropout }
    }

    /// # Shapes
    /// - x: `[n, d_in]` -> `[n, d_out]`
    pub fn forward(&self, x: Tensor<B, 2>, rng: Option<&mut HostRng>) -> Tensor<B, 2> {
        let x = match rng {
            Some(rng) if self.dropout > 0.0 => x.clone() * dropout_mask::<B>(x.dims(), self.dropout, rng, &x.device()),
            _ => x,
        };
        x.matmul(self.a.value.clone()).matmul(self.b.value.clone()) * self.scale
    }

    pub fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit2(&format!("{prefix}.lora_A"), &mut self.a);
        v.visit2(&format!("{prefix}.lora_B"), &mut self.b);
    }
}

/// Inverted-dropout mask (kept entries scaled by 1/(1-p)), drawn on the host so that a seed
/// gives the same masks on every backend.
fn dropout_mask<B: Backend>(shape: [usize; 2], p: f64, rng: &mut HostRng, device: &B::Device) -> Tensor<B, 2> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let values: Vec<f32> = (0..shape[0] * shape[1]).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Freezes the base model and adds a LoRA adapter to every targeted projection of every layer.
/// Nothing changes when any check fails.
pub fn attach<B: Backend>(model: &mut Llama<B>, config: &LoraConfig) -> Result<usize, LoraError> {
    config.validate()?;
    for (i, layer) in model.layers.iter().enumerate() {
        for t in &config.targets {
            let lin = layer.linear(t).expect("validated target");
            if lin.lora.is_some() {
                return Err(LoraError::AlreadyAttached(format!("layers.{i}.{t}")));
            }
            let side = lin.d_in().min(lin.d_out());
            if config.rank > side {
                return Err(LoraError::RankTooLarge { rank: config.rank, side, module: format!("layers.{i}.{t}") });
            }
        }
    }
    model.visit(&mut SetTrainable(false));
    let scale = config.scale();
    let device = model.device.clone();
    let mut added = 0;
    for (i, layer) in model.layers.iter_mut().enumerate() {
        for t in &config.targets {
            let lin = layer.linear_mut(t).expect("validated target");
            let mut rng = init::rng_for(config.seed, &format!("lora.layers.{i}.{t}"));
            let adapter = LoraAdapter::new(lin.d_in(), lin.d_out(), config.rank, scale, config.dropout, &mut rng, &device);
            added += adapter.a.numel() + adapter.b.numel();
            lin.lora = Some(adapter);
        }
    }
    // Adapters attached earlier stay trainable.
    struct UnfreezeLora;
    impl<B: Backend> ParamVisitor<B> for UnfreezeLora {
        fn visit1(&mut self, _: &str, _: &mut Param<B, 1>) {}
        fn visit2(&mut self, name: &str, p: &mut Param<B, 2>) {
            if name.ends_with(".lora_A") || name.ends_with(".lora_B") {
                p.set_trainable(true);
            }
        }
    }
    model.visit(&mut UnfreezeLora);
    Ok(added)
}
