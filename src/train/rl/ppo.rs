//! Proximal policy optimisation for RLHF (Ouyang et al. 2022) as Hugging Face TRL's
//! `PPOTrainer` (its `trl.experimental.ppo`, and the adaptive KL controller of the older one)
//! computes it, over one frozen base: the policy, the value function and (usually) the reward
//! model are adapters of the same model, and the reference is the policy with adapters
//! disabled or another adapter, so no weight matrix exists twice (TRL holds four models).
//!
//! One iteration: sample a completion per prompt (temperature 0.7 by default), score it (a
//! reward-model adapter or any function), take the policy's, the reference's and the value
//! adapter's per-token values without a graph, form per-token rewards
//! `−kl_coef·kl` with the score added at the last token, GAE advantages (whitened) and
//! returns, then `num_ppo_epochs` passes over shuffled minibatches, one optimizer step each,
//! on `loss = policy_loss + vf_coef · value_loss` (clipped both), one AdamW over the policy
//! and value adapters as TRL's policy-and-value wrapper (TRL clips no gradients in PPO;
//! `max_grad_norm`, when set, clips the two adapters' joint norm).
//!
//! Differences from TRL, deliberate: the score sits on the last completion token (TRL's lands
//! one position later when the completion is shorter than the batch's longest, see
//! [`super::math::ppo_token_rewards`]), the value loss covers the completion tokens only,
//! and `policy/approxkl_avg` and `val/ratio` are means over completion tokens (TRL's count
//! the padding too).

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, TensorData};
use rand::seq::SliceRandom;

use super::math::{
    AdaptiveKl, KlEstimator, gae, ppo_policy_loss, ppo_token_rewards, ppo_value_loss, whiten,
};
use super::policy::backward_through_logps;
use super::rollout::{Completions, completion_logps, rollout_seed, sample};
use crate::generate::GenerateOptions;
use crate::memory;
use crate::model::Llama;
use crate::model::init::{self, HostRng};
use crate::peft;
use crate::train::GradMap;
use crate::train::dpo::Reference;
use crate::train::trainer::{StepReport, TrainError, Trainer};

/// PPO's settings, with TRL's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct PpoConfig {
    pub num_ppo_epochs: usize,
    pub num_mini_batches: usize,
    pub cliprange: f64,
    pub cliprange_value: f64,
    pub vf_coef: f64,
    pub gamma: f64,
    pub lam: f64,
    /// The KL coefficient, or the adaptive controller's initial value.
    pub kl_coef: f64,
    pub kl_estimator: KlEstimator,
    /// `(target, horizon)` of the adaptive KL controller (the older TRL's 6 and 10000);
    /// `None` keeps `kl_coef` fixed.
    pub adaptive_kl: Option<(f64, f64)>,
    pub whiten_rewards: bool,
    /// Subtracted from the score of a completion without EOS (or a stop string).
    pub missing_eos_penalty: Option<f64>,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    /// The completion length limit (TRL's `response_length`).
    pub response_length: usize,
    pub eos: Vec<u32>,
    pub seed: u64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            num_ppo_epochs: 4,
            num_mini_batches: 1,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lam: 0.95,
            kl_coef: 0.05,
            kl_estimator: KlEstimator::K1,
            adaptive_kl: None,
            whiten_rewards: false,
            missing_eos_penalty: None,
            temperature: 0.7,
            top_p: 1.0,
            top_k: 0,
            response_length: 53,
            eos: Vec::new(),
            seed: 0,
        }
    }
}

impl PpoConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        let problem = if self.num_ppo_epochs == 0 || self.num_mini_batches == 0 {
            Some("num_ppo_epochs and num_mini_batches must be at least 1".to_string())
        } else if !(self.cliprange > 0.0 && self.cliprange < 1.0 && self.cliprange_value > 0.0) {
            Some(format!(
                "cliprange must be in (0, 1) and cliprange_value > 0, got {} and {}",
                self.cliprange, self.cliprange_value
            ))
        } else if !(self.gamma > 0.0 && self.gamma <= 1.0 && self.lam >= 0.0 && self.lam <= 1.0) {
            Some(format!(
                "gamma must be in (0, 1] and lam in [0, 1], got {} and {}",
                self.gamma, self.lam
            ))
        } else if !(self.kl_coef >= 0.0 && self.vf_coef >= 0.0) {
            Some("kl_coef and vf_coef must be ≥ 0".to_string())
        } else if self.adaptive_kl.is_some_and(|(t, h)| !(t > 0.0 && h > 0.0)) {
            Some("the adaptive KL target and horizon must be > 0".to_string())
        } else if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            Some(format!("temperature must be > 0, got {}", self.temperature))
        } else if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            Some(format!("top_p must be in (0, 1], got {}", self.top_p))
        } else if self.response_length == 0 {
            Some("response_length must be at least 1".to_string())
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(TrainError::Invalid(p)))
    }
}

/// What a PPO iteration logs, by TRL's names ([`PpoMetrics::named`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PpoMetrics {
    /// Mean over completions of the summed per-token KL.
    pub kl: f64,
    /// Mean over completions of the summed `−kl_coef·kl`.
    pub non_score_reward: f64,
    /// `scores + non_score_reward`.
    pub rlhf_reward: f64,
    /// Mean score (after the missing-EOS penalty).
    pub scores: f64,
    pub approxkl: f64,
    pub clipfrac: f64,
    pub policy_loss: f64,
    pub value_loss: f64,
    pub value_clipfrac: f64,
    pub ratio: f64,
    /// Completions that ended at EOS or a stop string.
    pub num_eos: f64,
    pub mean_length: f64,
    /// The KL coefficient used for this iteration's rewards.
    pub kl_coef: f64,
    pub generation_seconds: f64,
    pub training_seconds: f64,
}

impl PpoMetrics {
    pub fn named(&self) -> [(&'static str, f64); 15] {
        [
            ("objective/kl", self.kl),
            ("objective/non_score_reward", self.non_score_reward),
            ("objective/rlhf_reward", self.rlhf_reward),
            ("objective/scores", self.scores),
            ("policy/approxkl_avg", self.approxkl),
            ("policy/clipfrac_avg", self.clipfrac),
            ("loss/policy_avg", self.policy_loss),
            ("loss/value_avg", self.value_loss),
            ("val/clipfrac_avg", self.value_clipfrac),
            ("val/ratio", self.ratio),
            ("val/num_eos_tokens", self.num_eos),
            ("completions/mean_length", self.mean_length),
            ("kl_coef", self.kl_coef),
            ("time/generation", self.generation_seconds),
            ("time/training", self.training_seconds),
        ]
    }
}

pub struct PpoReport {
    /// The last optimizer step of the iteration.
    pub step: StepReport,
    pub metrics: PpoMetrics,
    pub completions: Completions,
    pub scores: Vec<f64>,
}

pub struct PpoTrainer<B: AutodiffBackend> {
    pub trainer: Trainer<B>,
    pub config: PpoConfig,
    pub policy: String,
    pub value: String,
    pub reference: Reference<B>,
    kl: AdaptiveKl,
    rng: HostRng,
    iterations: u64,
}

/// The rollout's values, per completion token.
struct Rollout {
    logps: Vec<Vec<f64>>,
    values: Vec<Vec<f64>>,
    advantages: Vec<Vec<f64>>,
    returns: Vec<Vec<f64>>,
}

impl<B: AutodiffBackend> PpoTrainer<B> {
    /// The policy is the model's active adapter; `value` names the value adapter, which must
    /// carry a score head (attach it after `model:add_score_head`, or load a reward model's
    /// adapter as TRL initialises the value model from the reward model). The reference is
    /// `ref_adapter`, or the policy with adapters disabled.
    pub fn new(
        trainer: Trainer<B>,
        config: PpoConfig,
        model: &Llama<B>,
        value: &str,
        ref_adapter: Option<&str>,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        let policy = model.active_adapter.clone().ok_or_else(|| {
            TrainError::Invalid(
                "PPO trains the active adapter as the policy; attach or select one first".into(),
            )
        })?;
        if policy == value {
            return Err(TrainError::Invalid(format!(
                "the value adapter '{value}' is the policy; give the value function its own adapter"
            )));
        }
        peft::find(model, value).map_err(|e| TrainError::Invalid(format!("value adapter: {e}")))?;
        let mut probe = model.detached();
        probe.activate_slots(Some(value));
        if probe.score_head().is_none() {
            return Err(TrainError::Invalid(format!(
                "the value adapter '{value}' has no score head (add the score head before attaching it, or load a reward model's adapter)"
            )));
        }
        if model.param_count().trainable == 0 {
            return Err(TrainError::NothingToTrain);
        }
        let reference = Reference::resolve(model, None, ref_adapter)?;
        if matches!(reference, Reference::Adapter(ref r) if r == value) {
            return Err(TrainError::Invalid(
                "the reference cannot be the value adapter".into(),
            ));
        }
        Ok(Self {
            rng: init::rng_for(config.seed, "ppo"),
            kl: AdaptiveKl {
                value: config.kl_coef,
                target: config.adaptive_kl.map_or(1.0, |a| a.0),
                horizon: config.adaptive_kl.map_or(1.0, |a| a.1),
            },
            trainer,
            config,
            policy,
            value: value.to_string(),
            reference,
            iterations: 0,
        })
    }

    /// The KL coefficient the next iteration uses.
    pub fn kl_coef(&self) -> f64 {
        self.kl.value
    }

    /// The sampling settings of this iteration's rollout (a new seed each iteration).
    fn rollout_options(&self) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.config.response_length,
            temperature: self.config.temperature,
            top_p: self.config.top_p,
            top_k: self.config.top_k,
            seed: rollout_seed(self.config.seed, self.iterations),
            stop: self.config.eos.clone(),
        }
    }

    /// One PPO iteration over `prompts` (token ids): `score` gives each completion's score
    /// (a reward-model adapter, or any function); `stop(i, tokens)` ends completion `i` early.
    pub fn step(
        &mut self,
        model: &mut Llama<B>,
        prompts: &[Vec<u32>],
        stop: impl FnMut(usize, &[u32]) -> bool,
        score: impl FnOnce(&Llama<B>, &Completions) -> Result<Vec<f64>, TrainError>,
    ) -> Result<PpoReport, TrainError> {
        if prompts.is_empty() {
            return Err(TrainError::Invalid("PPO step got no prompts".into()));
        }
        let n = prompts.len();
        let per_mini = n / self.config.num_mini_batches;
        if per_mini == 0 || self.trainer.options.accumulate > per_mini {
            return Err(TrainError::Invalid(format!(
                "{n} prompts cannot make {} minibatches of {} micro-batches",
                self.config.num_mini_batches, self.trainer.options.accumulate
            )));
        }
        let started = Instant::now();
        peft::set_active(model, Some(&self.policy))
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        let opts = self.rollout_options();
        self.iterations += 1;
        let batch = sample(model, prompts, &opts, stop)?;
        let t = self.config.temperature;
        let logps = completion_logps(model, &batch, t);
        let ref_logps = completion_logps(&self.reference.model(model), &batch, t);
        let values = self.values(model, &batch)?;
        let mut scores = score(model, &batch)?;
        if scores.len() != batch.len() {
            return Err(TrainError::Invalid(format!(
                "the score function gave {} scores for {} completions",
                scores.len(),
                batch.len()
            )));
        }
        if let Some(penalty) = self.config.missing_eos_penalty {
            for (s, &ended) in scores.iter_mut().zip(&batch.ended) {
                if !ended {
                    *s -= penalty;
                }
            }
        }
        let generation_seconds = started.elapsed().as_secs_f64();

        let kl_coef = self.kl.value;
        let (rewards, kls): (Vec<Vec<f64>>, Vec<Vec<f64>>) = logps
            .iter()
            .zip(&ref_logps)
            .zip(&scores)
            .map(|((p, r), &s)| ppo_token_rewards(p, r, self.config.kl_estimator, kl_coef, s))
            .unzip();
        let rewards = if self.config.whiten_rewards {
            whiten(&rewards, false)
        } else {
            rewards
        };
        let (advantages, returns): (Vec<Vec<f64>>, Vec<Vec<f64>>) = rewards
            .iter()
            .zip(&values)
            .map(|(r, v)| gae(r, v, self.config.gamma, self.config.lam))
            .unzip();
        let rollout = Rollout {
            logps,
            values,
            advantages: whiten(&advantages, true),
            returns,
        };

        let started = Instant::now();
        let mut stats = Vec::new();
        let mut last = None;
        for _ in 0..self.config.num_ppo_epochs {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut self.rng);
            for mini in order.chunks(per_mini).take(self.config.num_mini_batches) {
                last = Some(self.update(model, &batch, &rollout, mini, &mut stats)?);
            }
        }
        peft::set_active(model, Some(&self.policy))
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        let training_seconds = started.elapsed().as_secs_f64();

        let seq_kl: Vec<f64> = kls.iter().map(|k| k.iter().sum()).collect();
        let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
        let kl = mean(&seq_kl);
        let non_score = -kl_coef * kl;
        if self.config.adaptive_kl.is_some() {
            self.kl.update(kl, n);
        }
        let avg = |f: fn(&MiniStats) -> f64| mean(&stats.iter().map(f).collect::<Vec<_>>());
        let metrics = PpoMetrics {
            kl,
            non_score_reward: non_score,
            rlhf_reward: mean(&scores) + non_score,
            scores: mean(&scores),
            approxkl: avg(|s| s.approxkl),
            clipfrac: avg(|s| s.clipfrac),
            policy_loss: avg(|s| s.policy_loss),
            value_loss: avg(|s| s.value_loss),
            value_clipfrac: avg(|s| s.value_clipfrac),
            ratio: avg(|s| s.ratio),
            num_eos: batch.ended.iter().filter(|&&e| e).count() as f64,
            mean_length: mean(
                &batch
                    .completions
                    .iter()
                    .map(|c| c.len() as f64)
                    .collect::<Vec<_>>(),
            ),
            kl_coef,
            generation_seconds,
            training_seconds,
        };
        Ok(PpoReport {
            step: last.expect("at least one minibatch"),
            metrics,
            completions: batch,
            scores,
        })
    }

    /// The value adapter's per-token values of every completion, without a graph.
    fn values(&self, model: &Llama<B>, batch: &Completions) -> Result<Vec<Vec<f64>>, TrainError> {
        let mut v = model.detached();
        v.activate_slots(Some(&self.value));
        let (ids, _, width) = batch.training_rows();
        let input =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch.len(), width]), &v.device);
        let values = v.token_scores(v.hidden_states(input, None))?;
        let values: Vec<f64> = values.into_data().convert::<f64>().to_vec().expect("f64");
        Ok(batch.per_completion(&values, width))
    }

    /// One optimizer step on the minibatch `rows`: the policy loss through the policy
    /// adapter, the value loss through the value adapter, one joint update.
    fn update(
        &mut self,
        model: &mut Llama<B>,
        batch: &Completions,
        rollout: &Rollout,
        rows: &[usize],
        stats: &mut Vec<MiniStats>,
    ) -> Result<StepReport, TrainError> {
        let k = self.trainer.options.accumulate;
        let per_micro = rows.len().div_ceil(k);
        let pick =
            |xs: &[Vec<f64>], r: &[usize]| r.iter().map(|&i| xs[i].clone()).collect::<Vec<_>>();
        let subset = |r: &[usize]| Completions {
            prompts: r.iter().map(|&i| batch.prompts[i].clone()).collect(),
            completions: r.iter().map(|&i| batch.completions[i].clone()).collect(),
            ended: r.iter().map(|&i| batch.ended[i]).collect(),
        };
        let tokens: usize = rows
            .iter()
            .map(|&i| batch.prompts[i].len() + batch.completions[i].len())
            .sum();
        let target_tokens: usize = rows.iter().map(|&i| batch.completions[i].len()).sum();
        let (policy, value) = (self.policy.clone(), self.value.clone());
        let config = self.config.clone();
        let mut mini = MiniStats::default();
        let report = self.trainer.step_with(
            model,
            tokens,
            target_tokens,
            |_, model, loss_scale, grads| {
                let mut total = 0.0;
                let chunks: Vec<&[usize]> = rows.chunks(per_micro).collect();
                let share = 1.0 / chunks.len() as f64;
                for micro_rows in &chunks {
                    let micro = subset(micro_rows);
                    let (old, adv) = (
                        pick(&rollout.logps, micro_rows),
                        pick(&rollout.advantages, micro_rows),
                    );
                    peft::set_active(model, Some(&policy))
                        .map_err(|e| TrainError::Invalid(e.to_string()))?;
                    let (pg_loss, _, pg) =
                        backward_through_logps(model, &micro, config.temperature, grads, |logps| {
                            let pg = ppo_policy_loss(logps, &old, &adv, config.cliprange);
                            let grad = pg
                                .grad
                                .iter()
                                .map(|s| s.iter().map(|d| d * share * loss_scale).collect())
                                .collect();
                            (pg.loss, grad, pg)
                        });
                    if !pg_loss.is_finite() {
                        return Ok(pg_loss);
                    }
                    peft::set_active(model, Some(&value))
                        .map_err(|e| TrainError::Invalid(e.to_string()))?;
                    let vf = value_backward(
                        model,
                        &micro,
                        &pick(&rollout.values, micro_rows),
                        &pick(&rollout.returns, micro_rows),
                        &config,
                        share * loss_scale,
                        grads,
                    )?;
                    total += share * (pg.loss + config.vf_coef * vf.loss);
                    mini.policy_loss += share * pg.loss;
                    mini.value_loss += share * vf.loss;
                    mini.approxkl += share * pg.approxkl;
                    mini.clipfrac += share * pg.clipfrac;
                    mini.ratio += share * pg.ratio_mean;
                    mini.value_clipfrac += share * vf.clipfrac;
                }
                // Both adapters take this step's update (TRL's one optimizer over policy and value).
                peft::set_active(model, Some(&policy))
                    .map_err(|e| TrainError::Invalid(e.to_string()))?;
                peft::also_train(model, &value).map_err(|e| TrainError::Invalid(e.to_string()))?;
                Ok(total)
            },
        )?;
        peft::set_active(model, Some(&self.policy))
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        stats.push(mini);
        Ok(report)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct MiniStats {
    policy_loss: f64,
    value_loss: f64,
    approxkl: f64,
    clipfrac: f64,
    ratio: f64,
    value_clipfrac: f64,
}

/// The value loss of a micro-batch through the active (value) adapter: values at the positions
/// that predict each completion token, the clipped loss, and its gradient times `vf_coef` and
/// `scale` added to `grads`.
fn value_backward<B: AutodiffBackend>(
    model: &mut Llama<B>,
    batch: &Completions,
    old_values: &[Vec<f64>],
    returns: &[Vec<f64>],
    config: &PpoConfig,
    scale: f64,
    grads: &mut GradMap<B>,
) -> Result<super::math::ValueLoss, TrainError> {
    let (ids, _, width) = batch.training_rows();
    let rows = batch.len();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, width]), &model.device);
    let values = model.token_scores(model.hidden_states(input, None))?;
    let host: Vec<f64> = values
        .clone()
        .inner()
        .into_data()
        .convert::<f64>()
        .to_vec()
        .expect("f64");
    let current = batch.per_completion(&host, width);
    let vf = ppo_value_loss(&current, old_values, returns, config.cliprange_value);
    let mut weights = vec![0f32; rows * width];
    for (r, (p, g)) in batch.prompts.iter().zip(&vf.grad).enumerate() {
        for (j, d) in g.iter().enumerate() {
            weights[r * width + p.len() - 1 + j] = (d * config.vf_coef * scale) as f32;
        }
    }
    let weights =
        Tensor::<B, 1>::from_data(TensorData::new(weights, [rows * width]), &model.device);
    let g = (values * weights).sum().backward();
    grads.accumulate(&g, |c| model.visit(c));
    memory::sample_device::<B>(&model.device);
    Ok(vf)
}
