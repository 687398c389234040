//! Reward-model training on preference pairs, as Hugging Face TRL's `RewardTrainer`: a
//! one-label sequence-classification head read at each sequence's last token
//! ([`Llama::scores`]), the Bradley–Terry loss `−log σ(r_c − r_r − margin)` averaged over the
//! pairs, plus `center_rewards_coefficient · mean((r_c + r_r)²)` when set (Eisenstein et al.,
//! keeping rewards centred on zero).

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;

use super::GradMap;
use super::trainer::{StepReport, TrainError, Trainer, check_batch, input_tensor};
use crate::data::pairs::PairBatch;
use crate::kernels::precision;
use crate::memory;
use crate::model::Llama;
use crate::model::score::ScoreError;

impl From<ScoreError> for TrainError {
    fn from(e: ScoreError) -> Self {
        TrainError::Invalid(e.to_string())
    }
}

/// `RewardTrainer`'s settings beyond the optimizer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RewardConfig {
    /// TRL's `center_rewards_coefficient` (it suggests 0.01); `None` leaves rewards free.
    pub center_rewards_coefficient: Option<f64>,
}

/// What TRL logs for a batch of pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct RewardMetrics {
    pub loss: f64,
    /// Pairs whose chosen reward is strictly higher.
    pub accuracy: f64,
    /// Mean of `r_c − r_r`.
    pub margin: f64,
    /// Over every reward of the batch, chosen and rejected.
    pub mean_reward: f64,
    pub min_reward: f64,
    pub max_reward: f64,
    pub pairs: usize,
}

impl RewardMetrics {
    fn of(
        config: &RewardConfig,
        chosen: &[f64],
        rejected: &[f64],
        margins: Option<&[f64]>,
    ) -> Self {
        let n = chosen.len();
        let mean = |it: &mut dyn Iterator<Item = f64>| it.sum::<f64>() / n.max(1) as f64;
        let all = chosen.iter().chain(rejected).copied();
        let loss = mean(
            &mut (0..n)
                .map(|i| pair_loss(config, chosen[i], rejected[i], margins.map(|m| m[i]), 1).0),
        );
        Self {
            loss,
            accuracy: mean(&mut (0..n).map(|i| f64::from(u8::from(chosen[i] > rejected[i])))),
            margin: mean(&mut (0..n).map(|i| chosen[i] - rejected[i])),
            mean_reward: all.clone().sum::<f64>() / (2 * n).max(1) as f64,
            min_reward: all.clone().fold(f64::INFINITY, f64::min),
            max_reward: all.fold(f64::NEG_INFINITY, f64::max),
            pairs: n,
        }
    }

    /// `(TRL's metric name, value)`.
    pub fn named(&self) -> [(&'static str, f64); 6] {
        [
            ("loss", self.loss),
            ("accuracy", self.accuracy),
            ("margin", self.margin),
            ("mean_reward", self.mean_reward),
            ("min_reward", self.min_reward),
            ("max_reward", self.max_reward),
        ]
    }

    fn merge(parts: &[RewardMetrics]) -> Option<Self> {
        let n: usize = parts.iter().map(|p| p.pairs).sum();
        if n == 0 {
            return None;
        }
        let w = |f: fn(&RewardMetrics) -> f64| {
            parts.iter().map(|p| f(p) * p.pairs as f64).sum::<f64>() / n as f64
        };
        Some(Self {
            loss: w(|p| p.loss),
            accuracy: w(|p| p.accuracy),
            margin: w(|p| p.margin),
            mean_reward: w(|p| p.mean_reward),
            min_reward: parts
                .iter()
                .map(|p| p.min_reward)
                .fold(f64::INFINITY, f64::min),
            max_reward: parts
                .iter()
                .map(|p| p.max_reward)
                .fold(f64::NEG_INFINITY, f64::max),
            pairs: n,
        })
    }
}

/// One pair's share of the mean loss over `n` pairs and its derivatives with respect to
/// the chosen and the rejected reward.
fn pair_loss(
    config: &RewardConfig,
    chosen: f64,
    rejected: f64,
    margin: Option<f64>,
    n: usize,
) -> (f64, f64, f64) {
    let z = chosen - rejected - margin.unwrap_or(0.0);
    // −log σ(z) = log(1 + e^−z), stably; its derivative is −σ(−z).
    let nll = (-z).max(0.0) + (-z.abs()).exp().ln_1p();
    let s = 1.0 / (1.0 + z.exp());
    let n = n as f64;
    let (mut loss, mut dc, mut dr) = (nll / n, -s / n, s / n);
    if let Some(c) = config.center_rewards_coefficient {
        let sum = chosen + rejected;
        loss += c * sum * sum / n;
        dc += 2.0 * c * sum / n;
        dr += 2.0 * c * sum / n;
    }
    (loss, dc, dr)
}

/// What one reward-model step did.
#[derive(Clone, Debug, PartialEq)]
pub struct RewardReport {
    pub step: StepReport,
    pub metrics: RewardMetrics,
}

pub struct RewardTrainer<B: AutodiffBackend> {
    pub trainer: Trainer<B>,
    pub config: RewardConfig,
}

impl<B: AutodiffBackend> RewardTrainer<B> {
    /// Refuses a model without a score head or with nothing to train, before any step.
    pub fn new(
        trainer: Trainer<B>,
        config: RewardConfig,
        model: &Llama<B>,
    ) -> Result<Self, TrainError> {
        if model.score_head().is_none() {
            return Err(ScoreError::NoHead.into());
        }
        if let Some(c) = config.center_rewards_coefficient
            && !(c.is_finite() && c >= 0.0)
        {
            return Err(TrainError::Invalid(format!(
                "center_rewards_coefficient must be a number ≥ 0 (got {c})"
            )));
        }
        if model.param_count().trainable == 0 {
            return Err(TrainError::NothingToTrain);
        }
        Ok(Self { trainer, config })
    }

    pub fn step(
        &mut self,
        model: &mut Llama<B>,
        batch: &PairBatch,
    ) -> Result<RewardReport, TrainError> {
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
        let mut parts = Vec::new();
        let config = &self.config;
        let step = self
            .trainer
            .step_with(model, tokens, 0, |this, model, loss_scale, grads| {
                for micro in batch.split(k) {
                    crate::interrupt::check()?;
                    let metrics = micro_step(
                        config,
                        model,
                        &micro,
                        n,
                        loss_scale,
                        Some(&mut this.rng),
                        grads,
                    )?;
                    let finite = metrics.loss.is_finite();
                    parts.push(metrics);
                    if !finite {
                        break;
                    }
                }
                Ok(parts.iter().map(|p| p.loss * p.pairs as f64).sum::<f64>() / n as f64)
            })?;
        let metrics = RewardMetrics::merge(&parts).expect("at least one micro-batch");
        Ok(RewardReport { step, metrics })
    }

    /// TRL's metrics over every pair of `batches`, without dropout or a graph.
    pub fn evaluate(
        &self,
        model: &Llama<B>,
        batches: impl IntoIterator<Item = PairBatch>,
    ) -> Result<RewardMetrics, TrainError> {
        let _working = crate::interrupt::working();
        let model_d = model.detached();
        let _precision = precision::enter(self.trainer.options.precision);
        let mut parts = Vec::new();
        for batch in batches {
            crate::interrupt::check()?;
            check_batch(&model_d, &batch.batch)?;
            let values = pair_rewards(&model_d, &batch)?;
            let m = batch.pairs();
            parts.push(RewardMetrics::of(
                &self.config,
                &values[..m],
                &values[m..],
                batch.margins.as_deref(),
            ));
            memory::release_autodiff_graph::<B>(&model.device);
        }
        RewardMetrics::merge(&parts).ok_or(TrainError::NoEvalData)
    }
}

/// Forward and backward of one micro-batch: the gradient of its share of the mean loss over
/// the step's `n` pairs, times `loss_scale`, is added to `grads`; returns its metrics.
pub(crate) fn micro_step<B: AutodiffBackend>(
    config: &RewardConfig,
    model: &mut Llama<B>,
    micro: &PairBatch,
    n: usize,
    loss_scale: f64,
    rng: Option<&mut crate::model::init::HostRng>,
    grads: &mut GradMap<B>,
) -> Result<RewardMetrics, TrainError> {
    let m = micro.pairs();
    let scores = model.scores(
        input_tensor(&micro.batch, &model.device),
        &micro.lengths(),
        rng,
    )?;
    let values: Vec<f64> = scores
        .clone()
        .into_data()
        .convert::<f64>()
        .to_vec()
        .expect("f64 scores");
    let (chosen, rejected) = values.split_at(m);
    let margins = micro.margins.as_deref();
    let metrics = RewardMetrics::of(config, chosen, rejected, margins);
    memory::sample_device::<B>(&model.device);
    if !metrics.loss.is_finite() {
        return Ok(metrics);
    }
    let mut coeffs = vec![0.0f32; 2 * m];
    for i in 0..m {
        let (_, dc, dr) = pair_loss(config, chosen[i], rejected[i], margins.map(|x| x[i]), n);
        coeffs[i] = (dc * loss_scale) as f32;
        coeffs[m + i] = (dr * loss_scale) as f32;
    }
    let coeffs = Tensor::<B, 1>::from_data(TensorData::new(coeffs, [2 * m]), &model.device);
    let g = (scores * coeffs).sum().backward();
    grads.accumulate(&g, |c| model.visit(c));
    memory::sample_device::<B>(&model.device);
    Ok(metrics)
}

/// The loss's metrics and gradients on one batch, without an update (parity tests).
#[cfg(test)]
pub(crate) fn loss_and_gradients<B: AutodiffBackend>(
    config: &RewardConfig,
    model: &mut Llama<B>,
    batch: &PairBatch,
) -> Result<(RewardMetrics, GradMap<B>), TrainError> {
    let mut grads = GradMap::default();
    let metrics = micro_step(config, model, batch, batch.pairs(), 1.0, None, &mut grads)?;
    Ok((metrics, grads))
}

/// Rewards of a batch's rows (chosen first), without dropout.
pub fn pair_rewards<B: Backend>(
    model: &Llama<B>,
    batch: &PairBatch,
) -> Result<Vec<f64>, TrainError> {
    let scores = model.scores(
        input_tensor(&batch.batch, &model.device),
        &batch.lengths(),
        None,
    )?;
    Ok(scores
        .into_data()
        .convert::<f64>()
        .to_vec()
        .expect("f64 scores"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_derivatives_match_finite_differences() {
        let config = RewardConfig {
            center_rewards_coefficient: Some(0.01),
        };
        for (c, r, m) in [
            (0.3, -0.2, Some(0.5)),
            (-2.0, 1.0, None),
            (40.0, -40.0, Some(-0.25)),
        ] {
            let (_, dc, dr) = pair_loss(&config, c, r, m, 3);
            let h = 1e-6;
            let num_c = (pair_loss(&config, c + h, r, m, 3).0
                - pair_loss(&config, c - h, r, m, 3).0)
                / (2.0 * h);
            let num_r = (pair_loss(&config, c, r + h, m, 3).0
                - pair_loss(&config, c, r - h, m, 3).0)
                / (2.0 * h);
            assert!((num_c - dc).abs() < 1e-6 && (num_r - dr).abs() < 1e-6);
        }
        let plain = RewardConfig::default();
        assert!((pair_loss(&plain, 0.0, 0.0, None, 1).0 - std::f64::consts::LN_2).abs() < 1e-12);
    }
}
