//! One training step (forward, masked cross-entropy, backward, AdamW) and evaluation.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, TensorData};

use super::head_loss::{head_nll, next_token_targets, training_loss};
use super::optim::{AdamW, AdamWConfig, OptimError};
use crate::data::Batch;
use crate::model::init::{self, HostRng};
use crate::model::Llama;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrainError {
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error("token id {id} is outside the model's vocabulary (vocab_size {vocab})")]
    TokenOutOfRange { id: i64, vocab: usize },
    #[error("the batch has no labelled tokens to learn from (sequences of one token, or all labels masked)")]
    NoTargets,
    #[error("the model has no trainable parameters")]
    NothingToTrain,
    #[error("non-finite loss ({loss}) at step {step}; the weights were not updated")]
    NonFinite { step: usize, loss: f64 },
    #[error("evaluation got no batches")]
    NoEvalData,
    #[error("{0}")]
    Schedule(String),
}

/// Learning-rate schedules, as Hugging Face's `get_*_schedule_with_warmup` compute them
/// (the multiplier at update `s`, counted from 0, is `s / warmup` during warmup).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub warmup: usize,
    /// Total updates; required by linear and cosine decay.
    pub total: Option<usize>,
}

impl Default for Schedule {
    fn default() -> Self {
        Self { kind: ScheduleKind::Constant, warmup: 0, total: None }
    }
}

impl Schedule {
    pub fn validate(&self) -> Result<(), TrainError> {
        match (self.kind, self.total) {
            (ScheduleKind::Constant, _) => Ok(()),
            (_, None) => Err(TrainError::Schedule("linear and cosine schedules need total_steps".into())),
            (_, Some(total)) if total <= self.warmup => {
                Err(TrainError::Schedule(format!("total_steps ({total}) must exceed warmup ({})", self.warmup)))
            }
            _ => Ok(()),
        }
    }

    /// Multiplier of the base learning rate at update `s`.
    pub fn factor(&self, s: usize) -> f64 {
        if s < self.warmup {
            return s as f64 / self.warmup.max(1) as f64;
        }
        let Some(total) = self.total else { return 1.0 };
        let progress = (s - self.warmup) as f64 / (total - self.warmup).max(1) as f64;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => (1.0 - progress).max(0.0),
            ScheduleKind::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())).max(0.0),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct EvalResult {
    /// Token-weighted mean cross-entropy over all batches.
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: usize,
}

pub struct Trainer<B: AutodiffBackend> {
    pub optim: AdamW<B>,
    pub schedule: Schedule,
    /// Updates taken.
    pub step: usize,
    /// Dropout masks come from here, so a seed fixes the whole run.
    rng: HostRng,
}

impl<B: AutodiffBackend> Trainer<B> {
    pub fn new(optim: AdamWConfig, schedule: Schedule, seed: u64) -> Result<Self, TrainError> {
        schedule.validate()?;
        Ok(Self { optim: AdamW::new(optim)?, schedule, step: 0, rng: init::rng_for(seed, "dropout") })
    }

    /// The learning rate the next update will use.
    pub fn lr(&self) -> f64 {
        self.optim.config.lr * self.schedule.factor(self.step)
    }

    /// Forward, loss, backward and one AdamW update; returns the loss before the update.
    pub fn step(&mut self, model: &mut Llama<B>, batch: &Batch) -> Result<f64, TrainError> {
        check_batch(model, batch)?;
        if self.step == 0 && model.param_count().trainable == 0 {
            return Err(TrainError::NothingToTrain);
        }
        let hidden = model.hidden_states(input_tensor(batch, &model.device), Some(&mut self.rng));
        let targets = next_token_targets(&batch.labels, batch.batch, batch.seq);
        let head = model.head();
        let (value, surrogate) = training_loss(hidden, &head.value, head.trainable, &targets);
        if !value.is_finite() {
            return Err(TrainError::NonFinite { step: self.step, loss: value });
        }
        let grads = surrogate.backward();
        let lr = self.lr();
        self.optim.update(lr, &grads, |u| model.visit(u));
        self.step += 1;
        Ok(value)
    }
}

/// Mean loss over batches without dropout and without building an autodiff graph.
pub fn evaluate<B: Backend>(model: &Llama<B>, batches: impl IntoIterator<Item = Batch>) -> Result<EvalResult, TrainError> {
    let model = model.detached();
    let (mut total, mut tokens, mut seen) = (0.0f64, 0usize, 0usize);
    for batch in batches {
        check_batch(&model, &batch)?;
        let hidden = model.hidden_states(input_tensor(&batch, &model.device), None);
        let targets = next_token_targets(&batch.labels, batch.batch, batch.seq);
        let r = head_nll(hidden, model.head().value.clone(), &targets, 1.0, false, false);
        total += r.nll_sum;
        tokens += r.count;
        seen += 1;
    }
    if seen == 0 {
        return Err(TrainError::NoEvalData);
    }
    if tokens == 0 {
        return Err(TrainError::NoTargets);
    }
    let loss = total / tokens as f64;
    Ok(EvalResult { loss, perplexity: loss.exp(), tokens })
}

/// Rejects what Burn would panic on or silently mis-handle.
pub fn check_batch<B: Backend>(model: &Llama<B>, batch: &Batch) -> Result<(), TrainError> {
    let vocab = model.config.vocab_size;
    let max = batch.max_token();
    if max >= vocab as i64 {
        return Err(TrainError::TokenOutOfRange { id: max, vocab });
    }
    if let Some(&min) = batch.input_ids.iter().min()
        && min < 0
    {
        return Err(TrainError::TokenOutOfRange { id: min, vocab });
    }
    if batch.seq < 2 || batch.target_tokens() == 0 {
        return Err(TrainError::NoTargets);
    }
    Ok(())
}

pub fn input_tensor<B: Backend>(batch: &Batch, device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(batch.input_ids.clone(), [batch.batch, batch.seq]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_hugging_face() {
        let s = Schedule { kind: ScheduleKind::Cosine, warmup: 10, total: Some(110) };
        assert_eq!(s.factor(0), 0.0);
        assert_eq!(s.factor(5), 0.5);
        assert_eq!(s.factor(10), 1.0);
        assert!((s.factor(60) - 0.5).abs() < 1e-12);
        assert!(s.factor(110).abs() < 1e-12);
        let l = Schedule { kind: ScheduleKind::Linear, warmup: 0, total: Some(100) };
        assert!((l.factor(25) - 0.75).abs() < 1e-12);
        assert!(Schedule { kind: ScheduleKind::Linear, warmup: 5, total: None }.validate().is_err());
    }
}
