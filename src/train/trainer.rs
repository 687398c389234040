//! One training step (forward, masked cross-entropy, backward, AdamW) and evaluation.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, TensorData};

use super::head_loss::{head_nll, next_token_targets_segmented, training_loss};
use super::optim::{AdamW, AdamWConfig, GradMap, OptimError};
use crate::data::Batch;
use crate::kernels::precision::{self, LossScale, Precision, PrecisionError};
use crate::memory;
use crate::model::Llama;
use crate::model::init::{self, HostRng};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrainError {
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error("token id {id} is outside the model's vocabulary (vocab_size {vocab})")]
    TokenOutOfRange { id: i64, vocab: usize },
    #[error(
        "the batch has no labelled tokens to learn from (sequences of one token, or all labels masked)"
    )]
    NoTargets,
    #[error("the model has no trainable parameters")]
    NothingToTrain,
    #[error(
        "a sequence of {len} tokens is longer than the model's max_position_embeddings ({max}); \
         shorten it (max_len) or give the model more positions (max_seq)"
    )]
    TooLong { len: usize, max: usize },
    #[error(
        "{count} consecutive steps had a non-finite loss or gradient (last loss {loss}, at batch {batch}); stopping (max_nonfinite = {count})"
    )]
    NonFiniteLimit {
        count: usize,
        batch: usize,
        loss: f64,
    },
    #[error("accumulate must be at least 1 and at most the batch size ({batch}), got {accumulate}")]
    Accumulate { accumulate: usize, batch: usize },
    #[error("evaluation got no batches")]
    NoEvalData,
    #[error("{0}")]
    Schedule(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Interrupted(#[from] crate::interrupt::Interrupted),
    #[error(transparent)]
    Precision(#[from] PrecisionError),
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
        Self {
            kind: ScheduleKind::Constant,
            warmup: 0,
            total: None,
        }
    }
}

impl Schedule {
    pub(crate) fn validate(&self) -> Result<(), TrainError> {
        match (self.kind, self.total) {
            (ScheduleKind::Constant, _) => Ok(()),
            (_, None) => Err(TrainError::Schedule(
                "linear and cosine schedules need total_steps".into(),
            )),
            (_, Some(total)) if total <= self.warmup => Err(TrainError::Schedule(format!(
                "total_steps ({total}) must exceed warmup ({})",
                self.warmup
            ))),
            _ => Ok(()),
        }
    }

    /// Multiplier of the base learning rate at update `s`.
    pub(crate) fn factor(&self, s: usize) -> f64 {
        if s < self.warmup {
            return s as f64 / self.warmup.max(1) as f64;
        }
        let Some(total) = self.total else { return 1.0 };
        let progress = (s - self.warmup) as f64 / (total - self.warmup).max(1) as f64;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => (1.0 - progress).max(0.0),
            ScheduleKind::Cosine => {
                (0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())).max(0.0)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct EvalResult {
    /// Token-weighted mean cross-entropy over all batches.
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: usize,
    /// Fraction of labelled tokens whose most likely prediction is the label.
    pub accuracy: f64,
}

/// How each step runs, beyond the optimizer and the schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// Micro-batches each batch is split into (gradient accumulation): the update equals the
    /// whole batch's, with the activation memory of one micro-batch.
    pub accumulate: usize,
    /// Global L2 norm the gradients are clipped to (PyTorch's `clip_grad_norm_`).
    pub max_grad_norm: Option<f64>,
    /// Consecutive steps with a non-finite loss or gradient (each skipped, weights untouched)
    /// after which training stops with [`TrainError::NonFiniteLimit`].
    pub max_nonfinite: usize,
    /// Activation checkpointing at layer boundaries: the forward pass keeps only each layer's
    /// input, and the backward pass recomputes one layer at a time (about one more forward
    /// pass of compute for a fraction of the activation memory). Same gradients.
    pub checkpointing: bool,
    /// The type matrix products compute in (mixed precision; weights, optimizer states and
    /// the other operations stay f32). f16 scales the loss dynamically.
    pub precision: Precision,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            accumulate: 1,
            max_grad_norm: None,
            max_nonfinite: 5,
            checkpointing: false,
            precision: Precision::Fp32,
        }
    }
}

/// What one call to [`Trainer::step`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// Mean next-token loss over the batch's labelled tokens, before the update.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate of the update (0 when skipped).
    pub lr: f64,
    /// Tokens in the batch (padding included) and labelled tokens.
    pub tokens: usize,
    pub target_tokens: usize,
    /// True when the loss or a gradient was not finite and no update was made.
    pub skipped: bool,
    /// The f16 loss scale after the step (`None` unless training in f16).
    pub loss_scale: Option<f64>,
}

/// Counters that a checkpoint saves along with the weights and the optimizer.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Updates taken.
    pub step: usize,
    /// Batches consumed, skipped ones included (the data position to resume from).
    pub batches: usize,
    /// Steps skipped for non-finite values, in all and in a row.
    pub skipped: usize,
    pub consecutive_nonfinite: usize,
    /// The dynamic loss scale of f16 training (absent in checkpoints of other runs).
    #[serde(default)]
    pub loss_scale: Option<LossScale>,
}

pub struct Trainer<B: AutodiffBackend> {
    pub optim: AdamW<B>,
    pub schedule: Schedule,
    pub options: TrainOptions,
    pub progress: Progress,
    /// Dropout masks come from here, so a seed fixes the whole run.
    pub rng: HostRng,
}

impl<B: AutodiffBackend> Trainer<B> {
    pub fn new(optim: AdamWConfig, schedule: Schedule, seed: u64) -> Result<Self, TrainError> {
        Self::with_options(optim, schedule, TrainOptions::default(), seed)
    }

    pub fn with_options(
        optim: AdamWConfig,
        schedule: Schedule,
        options: TrainOptions,
        seed: u64,
    ) -> Result<Self, TrainError> {
        schedule.validate()?;
        if options.accumulate == 0 {
            return Err(TrainError::Accumulate {
                accumulate: 0,
                batch: 0,
            });
        }
        if options.max_nonfinite == 0 {
            return Err(TrainError::Invalid(
                "max_nonfinite must be at least 1".into(),
            ));
        }
        if let Some(max) = options.max_grad_norm
            && !(max.is_finite() && max > 0.0)
        {
            return Err(TrainError::Invalid(format!(
                "max_grad_norm must be a positive number (got {max})"
            )));
        }
        Ok(Self {
            optim: AdamW::new(optim)?,
            schedule,
            options,
            progress: Progress::default(),
            rng: init::rng_for(seed, "dropout"),
        })
    }

    /// Updates taken.
    pub fn steps(&self) -> usize {
        self.progress.step
    }

    /// The learning rate the next update will use.
    pub(crate) fn lr(&self) -> f64 {
        self.optim.config.lr * self.schedule.factor(self.progress.step)
    }

    /// Forward, loss and backward over the batch's micro-batches, then one AdamW update with
    /// the summed gradients (clipped when asked). A non-finite loss or gradient skips the
    /// update and is counted; too many in a row end training with an error.
    pub fn step(&mut self, model: &mut Llama<B>, batch: &Batch) -> Result<StepReport, TrainError> {
        let _working = crate::interrupt::working();
        check_batch(model, batch)?;
        let k = self.options.accumulate;
        if k > batch.batch {
            return Err(TrainError::Accumulate {
                accumulate: k,
                batch: batch.batch,
            });
        }
        let total = batch.target_tokens();
        let tokens = batch.batch * batch.seq;
        let consistency = super::consistency::weight(model);
        let lets_selecting = crate::peft::lets::searching(model).is_some();
        self.step_with(model, tokens, total, |this, model, loss_scale, grads| {
            let mut nll = 0.0;
            for (m, micro) in batch.split(k).into_iter().enumerate() {
                let first = m == 0;
                // Before each micro-batch (cheap), so a long accumulated step stops promptly.
                crate::interrupt::check()?;
                if micro.target_tokens() == 0 {
                    continue;
                }
                let micro_nll = if let Some(lambda) = consistency {
                    let (micro_nll, surrogate) = super::consistency::consistency_loss(
                        model,
                        &micro,
                        lambda,
                        total,
                        loss_scale,
                        &mut this.rng,
                    );
                    if micro_nll.is_finite() {
                        let g = surrogate.backward();
                        grads.accumulate(&g, |c| model.visit(c));
                    }
                    micro_nll
                } else if this.options.checkpointing && checkpointable(model) && !lets_selecting {
                    this.checkpointed_micro_step(model, &micro, total, loss_scale, grads)
                } else {
                    let hidden = model.hidden_states_segmented(
                        input_tensor(&micro, &model.device),
                        micro.segments.as_deref(),
                        Some(&mut this.rng),
                    );
                    let targets = next_token_targets_segmented(
                        &micro.labels,
                        micro.segments.as_deref(),
                        micro.batch,
                        micro.seq,
                    );
                    let head = model.head();
                    let (micro_nll, mut surrogate) = training_loss(
                        hidden,
                        &head.value,
                        head.trainable,
                        &targets,
                        total,
                        loss_scale,
                        model.config.final_logit_softcapping,
                    );
                    // LeTS's gate penalty while it selects layers, once per step.
                    if let Some(p) = (first && lets_selecting)
                        .then(|| crate::peft::lets::penalty(model))
                        .flatten()
                    {
                        surrogate = surrogate + p * loss_scale;
                    }
                    // Every activation is alive here: the usual peak of a step on a GPU.
                    memory::sample_device::<B>(&model.device);
                    if micro_nll.is_finite() {
                        let g = surrogate.backward();
                        grads.accumulate(&g, |c| model.visit(c));
                        memory::sample_device::<B>(&model.device);
                    }
                    micro_nll
                };
                nll += micro_nll;
                if !micro_nll.is_finite() {
                    break;
                }
            }
            Ok(nll / total as f64)
        })
    }

    /// What every objective's step shares (next-token, preference, reward): the guard against
    /// training nothing, mixed precision and f16 loss scaling around `objective`, which runs
    /// forward and backward, adds its gradients (of the loss times the loss scale) to the map
    /// and returns the loss; then the global norm, the skip of a non-finite step, clipping and
    /// the AdamW update. `tokens` and `target_tokens` are reported as they are.
    pub(crate) fn step_with(
        &mut self,
        model: &mut Llama<B>,
        tokens: usize,
        target_tokens: usize,
        objective: impl FnOnce(
            &mut Self,
            &mut Llama<B>,
            f64,
            &mut GradMap<B>,
        ) -> Result<f64, TrainError>,
    ) -> Result<StepReport, TrainError> {
        if self.progress.step == 0 && model.param_count().trainable == 0 {
            return Err(TrainError::NothingToTrain);
        }
        self.options.precision.check::<B>(&model.device)?;
        let _precision = precision::enter(self.options.precision);
        // f16 multiplies the loss (so every gradient) by the loss scale, and divides it out
        // of the gradients before clipping and the update.
        if self.options.precision.needs_loss_scaling() && self.progress.loss_scale.is_none() {
            self.progress.loss_scale = Some(LossScale::default());
        }
        let loss_scale = self.progress.loss_scale.map_or(1.0, |s| s.scale);
        let mut grads = GradMap::<B>::default();
        let loss = objective(self, model, loss_scale, &mut grads)?;
        self.progress.batches += 1;
        let grad_norm = if loss.is_finite() {
            grads.global_norm() / loss_scale
        } else {
            f64::NAN
        };
        let mut report = StepReport {
            loss,
            grad_norm,
            lr: 0.0,
            tokens,
            target_tokens,
            skipped: false,
            loss_scale: None,
        };
        if !grad_norm.is_finite() {
            self.progress.skipped += 1;
            report.skipped = true;
            // An f16 overflow of the scaled gradients with a finite loss: back off the scale
            // (GradScaler's skip). It counts towards the limit only once the scale is at its
            // floor, where the overflow is the model's, not f16's.
            let backed_off = match &mut self.progress.loss_scale {
                Some(s) if loss.is_finite() && s.can_back_off() => {
                    s.update(true);
                    true
                }
                _ => false,
            };
            report.loss_scale = self.progress.loss_scale.map(|s| s.scale);
            if !backed_off {
                self.progress.consecutive_nonfinite += 1;
                if self.progress.consecutive_nonfinite >= self.options.max_nonfinite {
                    return Err(TrainError::NonFiniteLimit {
                        count: self.progress.consecutive_nonfinite,
                        batch: self.progress.batches,
                        loss,
                    });
                }
            }
            return Ok(report);
        }
        self.progress.consecutive_nonfinite = 0;
        if let Some(s) = &mut self.progress.loss_scale {
            s.update(false);
        }
        // PyTorch's clip_grad_norm_: scale by max / (norm + 1e-6) when that is below 1.
        let scale = match self.options.max_grad_norm {
            Some(max) => (max / (grad_norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        report.lr = self.lr();
        self.optim
            .update_from(report.lr, &grads, scale / loss_scale, |u| model.visit(u));
        memory::sample_device::<B>(&model.device);
        self.progress.step += 1;
        report.loss_scale = self.progress.loss_scale.map(|s| s.scale);
        Ok(report)
    }
}

/// Activation checkpointing covers every method but prefix tuning, which feeds every layer
/// from one table (the layers would each need that table's gradient), and the adapters that
/// read every layer's output (`Llama::stageable`); they train with the plain pass.
pub fn checkpointable<B: Backend>(model: &Llama<B>) -> bool {
    model.stageable()
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Forward and backward of one micro-batch with activation checkpointing: a first pass
    /// without a graph keeps each layer's input; then the loss is differentiated with respect
    /// to the last one, and each layer, last to first, is recomputed with a graph (with the
    /// dropout RNG as it was) and differentiated with respect to its input, the upstream
    /// gradient flowing down. Returns the micro-batch's summed NLL; its gradients are added
    /// to `grads`.
    fn checkpointed_micro_step(
        &mut self,
        model: &mut Llama<B>,
        micro: &Batch,
        total: usize,
        loss_scale: f64,
        grads: &mut GradMap<B>,
    ) -> f64 {
        let frozen = model.detached();
        let staged = frozen
            .staged(
                input_tensor(micro, &model.device),
                micro.segments.as_deref(),
            )
            .expect("prefix tuning is not staged");
        let layers = model.config.num_hidden_layers;
        let mut inputs = Vec::with_capacity(layers);
        let mut rngs = Vec::with_capacity(layers);
        let mut x = frozen.stage_embed(&staged);
        for i in 0..layers {
            inputs.push(x.clone());
            rngs.push(self.rng.clone());
            x = frozen.stage_block(&staged, i, x, Some(&mut self.rng));
        }
        drop(frozen);

        let last = x.detach().require_grad();
        let hidden = model.stage_finish(&staged, last.clone());
        let targets = next_token_targets_segmented(
            &micro.labels,
            micro.segments.as_deref(),
            micro.batch,
            micro.seq,
        );
        let head = model.head();
        let (nll, surrogate) = training_loss(
            hidden,
            &head.value,
            head.trainable,
            &targets,
            total,
            loss_scale,
            model.config.final_logit_softcapping,
        );
        memory::sample_device::<B>(&model.device);
        if !nll.is_finite() {
            return nll;
        }
        let g = surrogate.backward();
        let Some(mut upstream) = last.grad(&g) else {
            return nll;
        };
        grads.accumulate(&g, |c| model.visit(c));
        for i in (0..layers).rev() {
            let input = inputs
                .pop()
                .expect("one input per layer")
                .detach()
                .require_grad();
            let y = model.stage_block(&staged, i, input.clone(), Some(&mut rngs[i].clone()));
            let g = (y * Tensor::from_inner(upstream)).sum().backward();
            grads.accumulate(&g, |c| model.visit(c));
            if i + 1 == layers {
                // One layer's recomputed activations and the gradients so far.
                memory::sample_device::<B>(&model.device);
            }
            match input.grad(&g) {
                Some(next) => upstream = next,
                None => return nll,
            }
        }
        // Last, the embedding stage: a trained embedding (full fine-tuning) or soft prompt gets
        // the gradient that reached the first layer's input.
        if model.embed_tokens.trainable || model.virtual_prompt().is_some() {
            let embedded = model.stage_embed(&staged);
            let g = (embedded * Tensor::from_inner(upstream)).sum().backward();
            grads.accumulate(&g, |c| model.visit(c));
        }
        nll
    }
}

/// Mean loss over batches without dropout and without building an autodiff graph.
pub fn evaluate<B: Backend>(
    model: &Llama<B>,
    batches: impl IntoIterator<Item = Batch>,
) -> Result<EvalResult, TrainError> {
    evaluate_with(model, batches, || {})
}

/// [`evaluate`], calling `after_batch` after each batch (to release the autodiff graph's
/// leftovers; see `memory::release_autodiff_graph`).
pub(crate) fn evaluate_with<B: Backend>(
    model: &Llama<B>,
    batches: impl IntoIterator<Item = Batch>,
    mut after_batch: impl FnMut(),
) -> Result<EvalResult, TrainError> {
    let _working = crate::interrupt::working();
    let model = model.detached();
    let (mut total, mut tokens, mut seen, mut correct) = (0.0f64, 0usize, 0usize, 0usize);
    for batch in batches {
        crate::interrupt::check()?;
        check_batch(&model, &batch)?;
        let hidden = model.hidden_states_segmented(
            input_tensor(&batch, &model.device),
            batch.segments.as_deref(),
            None,
        );
        let targets = next_token_targets_segmented(
            &batch.labels,
            batch.segments.as_deref(),
            batch.batch,
            batch.seq,
        );
        let r = head_nll(
            hidden,
            model.head().value.clone(),
            &targets,
            1.0,
            false,
            false,
            model.config.final_logit_softcapping,
        );
        total += r.nll_sum;
        tokens += r.count;
        correct += r.correct;
        after_batch();
        seen += 1;
    }
    if seen == 0 {
        return Err(TrainError::NoEvalData);
    }
    if tokens == 0 {
        return Err(TrainError::NoTargets);
    }
    let loss = total / tokens as f64;
    Ok(EvalResult {
        loss,
        perplexity: loss.exp(),
        tokens,
        accuracy: correct as f64 / tokens as f64,
    })
}

/// Rejects what Burn would panic on or silently mis-handle.
pub(crate) fn check_batch<B: Backend>(model: &Llama<B>, batch: &Batch) -> Result<(), TrainError> {
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
    if batch.input_ids.len() != batch.batch * batch.seq
        || batch.labels.len() != batch.input_ids.len()
        || batch
            .segments
            .as_ref()
            .is_some_and(|s| s.len() != batch.input_ids.len())
    {
        return Err(TrainError::Invalid(format!(
            "a batch of {}×{} needs that many input ids, labels and segments",
            batch.batch, batch.seq
        )));
    }
    if batch.seq < 2 || batch.target_tokens() == 0 {
        return Err(TrainError::NoTargets);
    }
    let max = model.config.max_position_embeddings;
    let len = longest_sequence(batch);
    if len > max {
        return Err(TrainError::TooLong { len, max });
    }
    Ok(())
}

/// The most positions any sequence of the batch uses: the padded length, or with packing the
/// longest segment (positions restart with each).
fn longest_sequence(batch: &Batch) -> usize {
    let Some(segments) = &batch.segments else {
        return batch.seq;
    };
    let mut longest = 0;
    for row in segments.chunks(batch.seq.max(1)) {
        let mut run = 0;
        for (i, &s) in row.iter().enumerate() {
            run = if i > 0 && s == row[i - 1] { run + 1 } else { 1 };
            if s != 0 {
                longest = longest.max(run);
            }
        }
    }
    longest
}

pub fn input_tensor<B: Backend>(batch: &Batch, device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(batch.input_ids.clone(), [batch.batch, batch.seq]),
        device,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_hugging_face() {
        let s = Schedule {
            kind: ScheduleKind::Cosine,
            warmup: 10,
            total: Some(110),
        };
        assert_eq!(s.factor(0), 0.0);
        assert_eq!(s.factor(5), 0.5);
        assert_eq!(s.factor(10), 1.0);
        assert!((s.factor(60) - 0.5).abs() < 1e-12);
        assert!(s.factor(110).abs() < 1e-12);
        let l = Schedule {
            kind: ScheduleKind::Linear,
            warmup: 0,
            total: Some(100),
        };
        assert!((l.factor(25) - 0.75).abs() < 1e-12);
        assert!(
            Schedule {
                kind: ScheduleKind::Linear,
                warmup: 5,
                total: None
            }
            .validate()
            .is_err()
        );
    }
}
