//! Direct preference optimisation (Rafailov et al. 2023) as Hugging Face TRL's `DPOTrainer`
//! computes it, with its sigmoid, IPO, hinge and robust losses, over one frozen base: the
//! reference model is, by default, the policy with its adapters disabled, so no second copy of
//! the weights exists.
//!
//! With `π` and `π_ref` the summed log-probs of a completion's tokens,
//! `δ = (π_c − π_ref,c) − (π_r − π_ref,r)` (for IPO each log-ratio divided by its completion's
//! length, as TRL does for IPO only) and `ε` the label smoothing, the loss per pair is:
//! - sigmoid: `−(1−ε)·log σ(βδ) − ε·log σ(−βδ)` (cDPO when ε > 0: TRL 1.16's `sigmoid`
//!   ignores `label_smoothing`; older TRL and the cDPO note apply it like this);
//! - robust: `(−(1−ε)·log σ(βδ) + ε·log σ(−βδ)) / (1 − 2ε)`;
//! - hinge: `relu(1 − βδ)`;
//! - IPO: `(δ − 1/(2β))²`;
//!
//! averaged over the batch's pairs, times `loss_weight`. With `sft_weight` > 0 the loss adds
//! that times the mean negative log-likelihood of the chosen completions' tokens (RPO, Pang
//! et al. 2024; TRL 1.16's `loss_type=[…, "sft"]` with `loss_weights`, older TRL's
//! `rpo_alpha`): it keeps DPO from lowering the chosen answers' probability while it widens
//! the margin. The implicit rewards are `β(π − π_ref)`.
//!
//! The head's log-probs are summed per sequence in chunks that never hold the whole
//! `[tokens × vocab]` logits (`head_loss::sequence_nll`); the loss's gradient with respect to
//! each sequence's log-prob weights that sequence's rows.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;

use super::head_loss::{next_token_targets, sequence_nll};
use super::trainer::{TrainError, Trainer, check_batch, input_tensor};
use crate::data::pairs::PairBatch;
use crate::kernels::precision;
use crate::memory;
use crate::model::Llama;

/// Which preference loss (TRL's `loss_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpoLoss {
    Sigmoid,
    Ipo,
    Hinge,
    Robust,
}

impl DpoLoss {
    pub const NAMES: [&'static str; 4] = ["sigmoid", "ipo", "hinge", "robust"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sigmoid" => Some(Self::Sigmoid),
            "ipo" => Some(Self::Ipo),
            "hinge" => Some(Self::Hinge),
            "robust" => Some(Self::Robust),
            _ => None,
        }
    }

    /// IPO compares mean per-token log-probs; the others compare sums.
    pub(crate) fn per_token(self) -> bool {
        self == Self::Ipo
    }
}

/// DPO's settings, with TRL's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct DpoConfig {
    pub beta: f64,
    pub loss: DpoLoss,
    /// ε of cDPO (sigmoid) and robust DPO; 0 elsewhere.
    pub label_smoothing: f64,
    /// Weight of the preference loss (TRL's `loss_weights` entry for it).
    pub loss_weight: f64,
    /// Weight of the chosen completions' mean token NLL (TRL's `"sft"` loss weight,
    /// `rpo_alpha`); 0 leaves it out.
    pub sft_weight: f64,
    /// Keep each sequence's reference log-prob once computed, so that every pair's reference
    /// pass runs once per dataset (TRL's `precompute_ref_log_probs`).
    pub cache_reference: bool,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss: DpoLoss::Sigmoid,
            label_smoothing: 0.0,
            loss_weight: 1.0,
            sft_weight: 0.0,
            cache_reference: false,
        }
    }
}

impl DpoConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(TrainError::Invalid(format!(
                "beta must be a positive number (got {})",
                self.beta
            )));
        }
        for (name, w) in [
            ("the preference loss's weight", self.loss_weight),
            ("the sft loss's weight", self.sft_weight),
        ] {
            if !w.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "{name} must be a finite number (got {w})"
                )));
            }
        }
        if self.loss_weight == 0.0 && self.sft_weight == 0.0 {
            return Err(TrainError::Invalid(
                "every loss weight is 0, so nothing would train".into(),
            ));
        }
        let ls = self.label_smoothing;
        match self.loss {
            DpoLoss::Sigmoid if (0.0..=0.5).contains(&ls) => Ok(()),
            DpoLoss::Robust if (0.0..0.5).contains(&ls) => Ok(()),
            DpoLoss::Sigmoid | DpoLoss::Robust => Err(TrainError::Invalid(format!(
                "label_smoothing must be in [0, 0.5{} for the {} loss (got {ls})",
                if self.loss == DpoLoss::Robust {
                    ")"
                } else {
                    "]"
                },
                if self.loss == DpoLoss::Robust {
                    "robust"
                } else {
                    "sigmoid"
                },
            ))),
            DpoLoss::Ipo | DpoLoss::Hinge if ls == 0.0 => Ok(()),
            DpoLoss::Ipo | DpoLoss::Hinge => Err(TrainError::Invalid(format!(
                "label_smoothing applies to the sigmoid and robust losses only (got {ls} with {})",
                if self.loss == DpoLoss::Ipo {
                    "ipo"
                } else {
                    "hinge"
                }
            ))),
        }
    }
}

fn log_sigmoid(x: f64) -> f64 {
    // Stable for large |x|: log σ(x) = min(x, 0) − log(1 + e^−|x|).
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// One pair's loss and its derivative with respect to `δ`.
pub fn pair_loss(config: &DpoConfig, delta: f64) -> (f64, f64) {
    let (beta, eps) = (config.beta, config.label_smoothing);
    let z = beta * delta;
    match config.loss {
        DpoLoss::Sigmoid => (
            -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z),
            -(1.0 - eps) * beta * sigmoid(-z) + eps * beta * sigmoid(z),
        ),
        DpoLoss::Robust => (
            (-(1.0 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1.0 - 2.0 * eps),
            (-(1.0 - eps) * beta * sigmoid(-z) - eps * beta * sigmoid(z)) / (1.0 - 2.0 * eps),
        ),
        // PyTorch's relu has derivative 0 at 0.
        DpoLoss::Hinge => ((1.0 - z).max(0.0), if 1.0 - z > 0.0 { -beta } else { 0.0 }),
        DpoLoss::Ipo => {
            let d = delta - 1.0 / (2.0 * beta);
            (d * d, 2.0 * d)
        }
    }
}

/// Per-pair values of one batch (summed log-probs, for IPO too, as TRL logs them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairValues {
    pub policy_chosen: Vec<f64>,
    pub policy_rejected: Vec<f64>,
    pub ref_chosen: Vec<f64>,
    pub ref_rejected: Vec<f64>,
    pub loss: Vec<f64>,
    /// Sums of the policy's logits over each side's completion tokens, and their number.
    pub logit_sum_chosen: f64,
    pub logit_sum_rejected: f64,
    pub logit_count_chosen: usize,
    pub logit_count_rejected: usize,
    /// Summed NLL of the chosen completions' tokens, and their number.
    pub chosen_nll: f64,
    pub chosen_tokens: usize,
}

impl PairValues {
    fn extend(&mut self, other: PairValues) {
        self.policy_chosen.extend(other.policy_chosen);
        self.policy_rejected.extend(other.policy_rejected);
        self.ref_chosen.extend(other.ref_chosen);
        self.ref_rejected.extend(other.ref_rejected);
        self.loss.extend(other.loss);
        self.logit_sum_chosen += other.logit_sum_chosen;
        self.logit_sum_rejected += other.logit_sum_rejected;
        self.logit_count_chosen += other.logit_count_chosen;
        self.logit_count_rejected += other.logit_count_rejected;
        self.chosen_nll += other.chosen_nll;
        self.chosen_tokens += other.chosen_tokens;
    }

    /// Mean NLL per chosen completion token.
    fn nll_loss(&self) -> f64 {
        self.chosen_nll / self.chosen_tokens.max(1) as f64
    }

    /// The objective: the weighted mean preference loss plus the weighted chosen-token NLL.
    fn total_loss(&self, config: &DpoConfig) -> f64 {
        let n = self.loss.len().max(1) as f64;
        let mut loss = config.loss_weight * self.loss.iter().sum::<f64>() / n;
        if config.sft_weight != 0.0 {
            loss += config.sft_weight * self.nll_loss();
        }
        loss
    }
}

/// What TRL logs for a batch, means over its pairs (`logits/*` over every logit of the
/// completion tokens), under TRL's names (see [`DpoMetrics::named`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DpoMetrics {
    pub loss: f64,
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub rewards_accuracies: f64,
    pub rewards_margins: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
    pub logits_chosen: f64,
    pub logits_rejected: f64,
    /// Mean NLL per chosen completion token (what the `sft` term minimises; TRL < 1.0 logged
    /// it as `nll_loss` with `rpo_alpha`).
    pub nll_loss: f64,
    pub pairs: usize,
}

impl DpoMetrics {
    fn of(config: &DpoConfig, v: &PairValues, vocab: usize) -> Self {
        let n = v.loss.len();
        let mean = |x: &mut dyn Iterator<Item = f64>| x.sum::<f64>() / n.max(1) as f64;
        let beta = config.beta;
        let chosen: Vec<f64> = (0..n)
            .map(|i| beta * (v.policy_chosen[i] - v.ref_chosen[i]))
            .collect();
        let rejected: Vec<f64> = (0..n)
            .map(|i| beta * (v.policy_rejected[i] - v.ref_rejected[i]))
            .collect();
        let logit_mean = |sum: f64, count: usize| sum / (count * vocab).max(1) as f64;
        Self {
            loss: v.total_loss(config),
            rewards_chosen: mean(&mut chosen.iter().copied()),
            rewards_rejected: mean(&mut rejected.iter().copied()),
            rewards_accuracies: mean(
                &mut (0..n).map(|i| f64::from(u8::from(chosen[i] > rejected[i]))),
            ),
            rewards_margins: mean(&mut (0..n).map(|i| chosen[i] - rejected[i])),
            logps_chosen: mean(&mut v.policy_chosen.iter().copied()),
            logps_rejected: mean(&mut v.policy_rejected.iter().copied()),
            logits_chosen: logit_mean(v.logit_sum_chosen, v.logit_count_chosen),
            logits_rejected: logit_mean(v.logit_sum_rejected, v.logit_count_rejected),
            nll_loss: v.nll_loss(),
            pairs: n,
        }
    }

    /// `(TRL's metric name, value)`, in TRL's order, then `nll_loss`.
    pub fn named(&self) -> [(&'static str, f64); 10] {
        [
            ("loss", self.loss),
            ("rewards/chosen", self.rewards_chosen),
            ("rewards/rejected", self.rewards_rejected),
            ("rewards/accuracies", self.rewards_accuracies),
            ("rewards/margins", self.rewards_margins),
            ("logps/chosen", self.logps_chosen),
            ("logps/rejected", self.logps_rejected),
            ("logits/chosen", self.logits_chosen),
            ("logits/rejected", self.logits_rejected),
            ("nll_loss", self.nll_loss),
        ]
    }
}

/// What one DPO step did: the shared step report and TRL's metrics of the batch.
#[derive(Clone, Debug, PartialEq)]
pub struct DpoReport {
    pub step: super::StepReport,
    pub metrics: DpoMetrics,
}

/// Where reference log-probs come from.
#[derive(Clone, Debug)]
pub enum Reference<B: Backend> {
    /// The policy itself with every adapter disabled (the default for adapter methods).
    AdaptersDisabled,
    /// The policy with another, frozen adapter active in place of the trained one (TRL's
    /// `ref_adapter_name`): DPO that continues an SFT adapter, against that adapter.
    Adapter(String),
    /// A frozen model: one passed in, or a snapshot of the policy before training (full
    /// fine-tuning, where there is no adapter to disable).
    Frozen(Box<Llama<B>>),
}

impl<B: Backend> Reference<B> {
    /// Where reference log-probs come from: `ref_adapter` when named (attached, not merged,
    /// not the active one), else `reference` when given, else the policy with adapters
    /// disabled, else (no adapter: full fine-tuning) a frozen snapshot of the policy now.
    pub fn resolve(
        model: &Llama<B>,
        reference: Option<Llama<B>>,
        ref_adapter: Option<&str>,
    ) -> Result<Self, TrainError> {
        if let Some(name) = ref_adapter {
            let index = crate::peft::find(model, name)
                .map_err(|e| TrainError::Invalid(format!("ref_adapter: {e}")))?;
            let info = &model.adapters[index];
            if model.active_adapter.as_deref() == Some(name) || info.merged || reference.is_some() {
                return Err(TrainError::Invalid(format!(
                    "the reference adapter '{name}' must be attached, not merged, and not the adapter being trained (and not given with ref)"
                )));
            }
            return Ok(Reference::Adapter(name.to_string()));
        }
        Ok(match reference {
            Some(r) => {
                if r.config.vocab_size != model.config.vocab_size {
                    return Err(TrainError::Invalid(format!(
                        "the reference model's vocabulary ({}) differs from the policy's ({})",
                        r.config.vocab_size, model.config.vocab_size
                    )));
                }
                Reference::Frozen(Box::new(r.detached()))
            }
            None if model.adapters.is_empty() => Reference::Frozen(Box::new(model.detached())),
            None => {
                if let Some(a) = model.adapters.iter().find(|a| a.merged) {
                    return Err(TrainError::Invalid(format!(
                        "adapter '{}' is merged into the base weights, so disabling adapters would not give the reference model; unmerge it or pass ref = <a model>",
                        a.name
                    )));
                }
                Reference::AdaptersDisabled
            }
        })
    }

    /// The reference as a model without a graph: the policy with the right adapter (or none)
    /// active, or the frozen model. Clones share the weights.
    pub fn model(&self, policy: &Llama<B>) -> Llama<B> {
        match self {
            Reference::AdaptersDisabled => {
                let mut base = policy.detached();
                base.activate_slots(None);
                base
            }
            Reference::Adapter(name) => {
                let mut other = policy.detached();
                other.activate_slots(Some(name));
                other
            }
            Reference::Frozen(r) => (**r).clone(),
        }
    }
}

pub struct DpoTrainer<B: AutodiffBackend> {
    pub trainer: Trainer<B>,
    pub config: DpoConfig,
    pub reference: Reference<B>,
    /// Reference log-prob (summed) per sequence, by a hash of its ids and labels.
    cache: HashMap<u64, f64>,
}

impl<B: AutodiffBackend> DpoTrainer<B> {
    /// Checks everything that can be checked before the first step: the settings, that the
    /// policy trains something (TRL's silent 0.6931 otherwise), and where the reference comes
    /// from: `reference` when given, else the policy with adapters disabled, else (no adapter:
    /// full fine-tuning) a frozen snapshot of the policy as it is now.
    pub fn new(
        trainer: Trainer<B>,
        config: DpoConfig,
        model: &Llama<B>,
        reference: Option<Llama<B>>,
    ) -> Result<Self, TrainError> {
        Self::with_reference(trainer, config, model, reference, None)
    }

    /// [`DpoTrainer::new`], or with `ref_adapter` the policy with that adapter active as the
    /// reference.
    pub fn with_reference(
        trainer: Trainer<B>,
        config: DpoConfig,
        model: &Llama<B>,
        reference: Option<Llama<B>>,
        ref_adapter: Option<&str>,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        if model.param_count().trainable == 0 {
            return Err(TrainError::NothingToTrain);
        }
        Ok(Self {
            trainer,
            config,
            reference: Reference::resolve(model, reference, ref_adapter)?,
            cache: HashMap::new(),
        })
    }

    /// One update on a batch of pairs (chosen rows first), split into the trainer's
    /// `accumulate` micro-batches of whole pairs.
    pub fn step(
        &mut self,
        model: &mut Llama<B>,
        batch: &PairBatch,
    ) -> Result<DpoReport, TrainError> {
        let _working = crate::interrupt::working();
        check_batch(model, &batch.batch)?;
        let n = batch.pairs();
        let k = self.trainer.options.accumulate;
        if k > n {
            return Err(TrainError::Accumulate {
                accumulate: k,
                batch: n,
            });
        }
        let tokens = batch.batch.batch * batch.batch.seq;
        let target_tokens = batch.batch.target_tokens();
        let chosen_tokens = chosen_target_tokens(batch);
        let mut values = PairValues::default();
        let (config, reference, cache) = (&self.config, &self.reference, &mut self.cache);
        let step = self.trainer.step_with(
            model,
            tokens,
            target_tokens,
            |_, model, loss_scale, grads| {
                for micro in batch.split(k) {
                    crate::interrupt::check()?;
                    let refs = reference_logps(config, reference, cache, &*model, &micro)?;
                    let scale = StepScale {
                        pairs: n,
                        chosen_tokens,
                        loss_scale,
                    };
                    let v = policy_step(config, model, &micro, refs, scale, grads)?;
                    let finite = v.loss.iter().all(|l| l.is_finite());
                    values.extend(v);
                    if !finite {
                        break;
                    }
                }
                Ok(values.total_loss(config))
            },
        )?;
        let metrics = DpoMetrics::of(&self.config, &values, model.config.vocab_size);
        Ok(DpoReport { step, metrics })
    }

    /// TRL's metrics over every pair of `batches`, without dropout and without a graph.
    pub fn evaluate(
        &mut self,
        model: &Llama<B>,
        batches: impl IntoIterator<Item = PairBatch>,
    ) -> Result<DpoMetrics, TrainError> {
        let _working = crate::interrupt::working();
        let policy = model.detached();
        let mut values = PairValues::default();
        // The reference and the policy in the compute type training uses.
        let _precision = precision::enter(self.trainer.options.precision);
        for batch in batches {
            crate::interrupt::check()?;
            check_batch(&policy, &batch.batch)?;
            let refs = reference_logps(
                &self.config,
                &self.reference,
                &mut self.cache,
                &policy,
                &batch,
            )?;
            let logps = sequence_logps(&policy, &batch);
            values.extend(pair_values(&self.config, &logps, &refs, batch.pairs()));
            memory::release_autodiff_graph::<B>(&model.device);
        }
        if values.loss.is_empty() {
            return Err(TrainError::NoEvalData);
        }
        Ok(DpoMetrics::of(
            &self.config,
            &values,
            model.config.vocab_size,
        ))
    }
}

/// The loss's metrics and gradients on one batch, without an update (parity tests).
#[cfg(test)]
pub(crate) fn loss_and_gradients<B: AutodiffBackend>(
    dpo: &mut DpoTrainer<B>,
    model: &mut Llama<B>,
    batch: &PairBatch,
) -> Result<(DpoMetrics, super::GradMap<B>), TrainError> {
    let mut grads = super::GradMap::default();
    let refs = reference_logps(&dpo.config, &dpo.reference, &mut dpo.cache, model, batch)?;
    let scale = StepScale {
        pairs: batch.pairs(),
        chosen_tokens: chosen_target_tokens(batch),
        loss_scale: 1.0,
    };
    let values = policy_step(&dpo.config, model, batch, refs, scale, &mut grads)?;
    Ok((
        DpoMetrics::of(&dpo.config, &values, model.config.vocab_size),
        grads,
    ))
}

/// Per-sequence summed log-probs of a batch's completion tokens, with the logit sums; no
/// dropout.
struct SequenceLogps {
    logps: Vec<f64>,
    tokens: Vec<usize>,
    logit_sums: Vec<f64>,
}

fn sequence_logps<B: Backend>(model: &Llama<B>, batch: &PairBatch) -> SequenceLogps {
    let b = &batch.batch;
    let hidden = model.hidden_states(input_tensor(b, &model.device), None);
    let targets = next_token_targets(&b.labels, b.batch, b.seq);
    let r = sequence_nll(
        hidden,
        model.head().value.clone(),
        &targets,
        b.seq,
        None,
        false,
        false,
        model.config.final_logit_softcapping,
    );
    finish_logps(r.nll, r.tokens, r.logit_sums)
}

fn finish_logps(nll: Vec<f64>, tokens: Vec<usize>, logit_sums: Vec<f64>) -> SequenceLogps {
    let logps = nll.iter().map(|&nll| -nll).collect();
    SequenceLogps {
        logps,
        tokens,
        logit_sums,
    }
}

/// Reference log-probs (summed) of every row, from the cache where allowed.
fn reference_logps<B: AutodiffBackend>(
    config: &DpoConfig,
    reference: &Reference<B>,
    cache: &mut HashMap<u64, f64>,
    model: &Llama<B>,
    batch: &PairBatch,
) -> Result<Vec<f64>, TrainError> {
    let b = &batch.batch;
    let keys: Vec<u64> = (0..b.batch)
        .map(|r| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            b.input_ids[r * b.seq..(r + 1) * b.seq].hash(&mut h);
            b.labels[r * b.seq..(r + 1) * b.seq].hash(&mut h);
            h.finish()
        })
        .collect();
    if config.cache_reference
        && let Some(hit) = keys
            .iter()
            .map(|k| cache.get(k).copied())
            .collect::<Option<Vec<f64>>>()
    {
        return Ok(hit);
    }
    if let Reference::Frozen(r) = reference {
        check_batch(r, b)?;
    }
    let logps = sequence_logps(&reference.model(model), batch).logps;
    if config.cache_reference {
        cache.extend(keys.into_iter().zip(logps.iter().copied()));
    }
    Ok(logps)
}

/// `δ` of pair `i` of `m`: the difference of the log-ratios, each divided by its
/// completion's length for IPO (TRL normalises there only).
fn delta(config: &DpoConfig, policy: &SequenceLogps, refs: &[f64], m: usize, i: usize) -> f64 {
    let (chosen, rejected) = (policy.logps[i] - refs[i], policy.logps[m + i] - refs[m + i]);
    if config.loss.per_token() {
        let len = |s: usize| policy.tokens[s].max(1) as f64;
        chosen / len(i) - rejected / len(m + i)
    } else {
        chosen - rejected
    }
}

fn pair_values(config: &DpoConfig, policy: &SequenceLogps, refs: &[f64], m: usize) -> PairValues {
    let mut v = PairValues::default();
    for i in 0..m {
        let (pc, pr) = (policy.logps[i], policy.logps[m + i]);
        let (rc, rr) = (refs[i], refs[m + i]);
        v.loss
            .push(pair_loss(config, delta(config, policy, refs, m, i)).0);
        v.policy_chosen.push(pc);
        v.policy_rejected.push(pr);
        v.ref_chosen.push(rc);
        v.ref_rejected.push(rr);
        v.logit_sum_chosen += policy.logit_sums[i];
        v.logit_sum_rejected += policy.logit_sums[m + i];
        v.logit_count_chosen += policy.tokens[i];
        v.logit_count_rejected += policy.tokens[m + i];
        v.chosen_nll -= pc;
        v.chosen_tokens += policy.tokens[i];
    }
    v
}

/// The number of scored tokens in the chosen completions of a batch (its first half of rows).
fn chosen_target_tokens(batch: &PairBatch) -> usize {
    batch.batch.target_tokens_in_rows(0..batch.pairs())
}

/// What a micro-batch's gradient is a share of: the step's pairs (the preference loss is
/// their mean), the step's chosen completion tokens (the sft term is their mean), and the
/// trainer's loss scale.
#[derive(Clone, Copy)]
struct StepScale {
    pairs: usize,
    chosen_tokens: usize,
    loss_scale: f64,
}

/// Forward and backward of one micro-batch of `m` pairs: the gradient of its share of the
/// step's loss (see [`StepScale`]), times the loss scale, is added to `grads`.
/// Dropout is off, as TRL's `disable_dropout` default has it.
fn policy_step<B: AutodiffBackend>(
    config: &DpoConfig,
    model: &mut Llama<B>,
    micro: &PairBatch,
    refs: Vec<f64>,
    scale: StepScale,
    grads: &mut super::GradMap<B>,
) -> Result<PairValues, TrainError> {
    let (n, loss_scale) = (scale.pairs, scale.loss_scale);
    let b = &micro.batch;
    let m = micro.pairs();
    let hidden = model.hidden_states(input_tensor(b, &model.device), None);
    let targets = next_token_targets(&b.labels, b.batch, b.seq);
    let head = model.head().clone();
    // First pass: log-probs, and the unweighted gradient when the head is frozen.
    let first = sequence_nll(
        hidden.clone().inner(),
        head.value.clone().inner(),
        &targets,
        b.seq,
        None,
        !head.trainable,
        false,
        model.config.final_logit_softcapping,
    );
    let tokens = first.tokens.clone();
    let logps = finish_logps(first.nll, first.tokens, first.logit_sums);
    let values = pair_values(config, &logps, &refs, m);
    memory::sample_device::<B>(&model.device);
    if values.loss.iter().any(|l| !l.is_finite()) {
        return Ok(values);
    }
    // dLoss/dlogp of each row; the loss is the mean over the step's n pairs.
    let mut dlogp = vec![0.0; 2 * m];
    for i in 0..m {
        let d = config.loss_weight
            * pair_loss(config, delta(config, &logps, &refs, m, i)).1
            * loss_scale
            / n as f64;
        dlogp[i] = d;
        dlogp[m + i] = -d;
    }
    for (s, d) in dlogp.iter_mut().enumerate() {
        if config.loss.per_token() {
            *d /= tokens[s].max(1) as f64;
        }
    }
    // The sft term, −w·Σ logp_chosen / T, adds −w/T to each chosen row's derivative.
    if config.sft_weight != 0.0 {
        let per_token = config.sft_weight * loss_scale / scale.chosen_tokens.max(1) as f64;
        for d in &mut dlogp[..m] {
            *d -= per_token;
        }
    }
    // logp = −nll, so the weight of each sequence's NLL gradient is −dLoss/dlogp.
    let weights: Vec<f64> = dlogp.iter().map(|d| -d).collect();
    let (grad_hidden, grad_head) = if head.trainable {
        let second = sequence_nll(
            hidden.clone().inner(),
            head.value.clone().inner(),
            &targets,
            b.seq,
            Some(&weights),
            true,
            true,
            model.config.final_logit_softcapping,
        );
        (second.grad_hidden.expect("asked for"), second.grad_head)
    } else {
        let per_row: Vec<f32> = weights
            .iter()
            .flat_map(|&w| std::iter::repeat_n(w as f32, b.seq))
            .collect();
        let scale = Tensor::<B::InnerBackend, 2>::from_data(
            TensorData::new(per_row, [b.batch * b.seq, 1]),
            &hidden.device(),
        );
        (first.grad_hidden.expect("asked for") * scale, None)
    };
    let mut surrogate = (hidden * Tensor::from_inner(grad_hidden)).sum();
    if let Some(gw) = grad_head {
        surrogate = surrogate + (head.value.clone() * Tensor::from_inner(gw)).sum();
    }
    let g = surrogate.backward();
    grads.accumulate(&g, |c| model.visit(c));
    memory::sample_device::<B>(&model.device);
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(loss: DpoLoss, beta: f64, ls: f64) -> DpoConfig {
        DpoConfig {
            beta,
            loss,
            label_smoothing: ls,
            ..DpoConfig::default()
        }
    }

    #[test]
    fn losses_at_zero_margin_and_their_derivatives_match_finite_differences() {
        let ln2 = std::f64::consts::LN_2;
        assert!((pair_loss(&cfg(DpoLoss::Sigmoid, 0.1, 0.0), 0.0).0 - ln2).abs() < 1e-12);
        assert!((pair_loss(&cfg(DpoLoss::Robust, 0.1, 0.2), 0.0).0 - ln2).abs() < 1e-12);
        assert_eq!(pair_loss(&cfg(DpoLoss::Hinge, 0.1, 0.0), 0.0).0, 1.0);
        assert!((pair_loss(&cfg(DpoLoss::Ipo, 0.1, 0.0), 0.0).0 - 25.0).abs() < 1e-12);
        for c in [
            cfg(DpoLoss::Sigmoid, 0.1, 0.0),
            cfg(DpoLoss::Sigmoid, 0.5, 0.1),
            cfg(DpoLoss::Robust, 0.1, 0.2),
            cfg(DpoLoss::Hinge, 0.3, 0.0),
            cfg(DpoLoss::Ipo, 0.1, 0.0),
        ] {
            for delta in [-7.0, -0.3, 0.4, 2.5] {
                let h = 1e-6;
                let numeric = (pair_loss(&c, delta + h).0 - pair_loss(&c, delta - h).0) / (2.0 * h);
                let analytic = pair_loss(&c, delta).1;
                assert!(
                    (numeric - analytic).abs() < 1e-6,
                    "{c:?} at {delta}: {numeric} vs {analytic}"
                );
            }
        }
    }

    #[test]
    fn settings_outside_their_range_are_refused() {
        assert!(cfg(DpoLoss::Sigmoid, 0.0, 0.0).validate().is_err());
        assert!(cfg(DpoLoss::Sigmoid, f64::NAN, 0.0).validate().is_err());
        assert!(cfg(DpoLoss::Robust, 0.1, 0.5).validate().is_err());
        assert!(cfg(DpoLoss::Ipo, 0.1, 0.1).validate().is_err());
        assert!(cfg(DpoLoss::Sigmoid, 0.1, 0.1).validate().is_ok());
    }

    #[test]
    fn log_sigmoid_is_stable_far_from_zero() {
        assert!((log_sigmoid(-800.0) + 800.0).abs() < 1e-9);
        assert!(log_sigmoid(800.0).abs() < 1e-300);
        assert!((sigmoid(-800.0)).abs() < 1e-300);
    }
}
