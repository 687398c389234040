//! Group relative policy optimisation (Shao et al. 2024) as Hugging Face TRL's `GRPOTrainer`
//! computes it: each prompt is completed `num_generations` times, the completions are scored
//! by reward functions (any number, weighted), each completion's advantage is its reward
//! against its group's (`(r − mean)/(std + 1e-4)`), and the policy takes one clipped
//! policy-gradient step on them, with an optional k3 KL to the reference (β, 0 by default;
//! the reference is the policy with adapters disabled, so no second copy of the weights).
//!
//! TRL's `num_iterations` is 1 here: the "old" log-probs are those of the step's own forward
//! pass, so the ratio is 1 and only its gradient counts (as TRL does for μ = 1).

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;

use super::math::{
    GrpoLoss, GrpoLossValue, GrpoObjective, ScaleRewards, group_advantages, grpo_loss,
};
use super::policy::backward_through_logps;
use super::rollout::{Completions, completion_logps, rollout_seed, sample};
use crate::generate::GenerateOptions;
use crate::model::Llama;
use crate::train::dpo::Reference;
use crate::train::trainer::{StepReport, TrainError, Trainer};

/// GRPO's settings, with TRL's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct GrpoConfig {
    /// Completions per prompt (G).
    pub num_generations: usize,
    pub objective: GrpoObjective,
    pub scale_rewards: ScaleRewards,
    pub temperature: f64,
    pub top_p: f64,
    /// 0 keeps every token.
    pub top_k: usize,
    /// One weight per reward function (all 1 when `None`).
    pub reward_weights: Option<Vec<f64>>,
    /// Tokens that end a completion (EOS).
    pub eos: Vec<u32>,
    pub seed: u64,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            num_generations: 8,
            objective: GrpoObjective {
                loss: GrpoLoss::Dapo,
                epsilon_low: 0.2,
                epsilon_high: 0.2,
                beta: 0.0,
                bias_correction_kl: true,
                max_completion_length: 256,
            },
            scale_rewards: ScaleRewards::Group,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            reward_weights: None,
            eos: Vec::new(),
            seed: 0,
        }
    }
}

impl GrpoConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        let o = &self.objective;
        let problem = if self.num_generations < 2 {
            Some(format!(
                "num_generations must be at least 2 (advantages compare completions of one prompt), got {}",
                self.num_generations
            ))
        } else if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            Some(format!("temperature must be > 0, got {}", self.temperature))
        } else if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            Some(format!("top_p must be in (0, 1], got {}", self.top_p))
        } else if !(o.epsilon_low >= 0.0 && o.epsilon_low < 1.0 && o.epsilon_high >= 0.0) {
            Some(format!(
                "epsilon must be in [0, 1) and epsilon_high ≥ 0, got {} and {}",
                o.epsilon_low, o.epsilon_high
            ))
        } else if !(o.beta >= 0.0 && o.beta.is_finite()) {
            Some(format!("beta must be ≥ 0, got {}", o.beta))
        } else if o.max_completion_length == 0 {
            Some("max_completion_length must be at least 1".to_string())
        } else if self
            .reward_weights
            .as_ref()
            .is_some_and(|w| w.iter().any(|x| !x.is_finite()))
        {
            Some("reward_weights must be finite numbers".to_string())
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(TrainError::Invalid(p)))
    }
}

/// What a GRPO step logs, with TRL's names where it has them ([`GrpoMetrics::named`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GrpoMetrics {
    /// Mean weighted reward.
    pub reward: f64,
    /// Mean over groups of the reward's standard deviation within the group.
    pub reward_std: f64,
    /// Mean and standard deviation of each reward function.
    pub rewards_per_func: Vec<(f64, f64)>,
    /// Groups whose rewards are all equal (no learning signal).
    pub frac_reward_zero_std: f64,
    pub mean_length: f64,
    pub min_length: f64,
    pub max_length: f64,
    /// Completions cut at the length limit (no EOS).
    pub clipped_ratio: f64,
    pub kl: f64,
    pub clip_low: f64,
    pub clip_high: f64,
    pub clip_region: f64,
    pub generation_seconds: f64,
    pub training_seconds: f64,
}

impl GrpoMetrics {
    pub fn named(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = vec![
            ("reward".into(), self.reward),
            ("reward_std".into(), self.reward_std),
            ("frac_reward_zero_std".into(), self.frac_reward_zero_std),
            ("completions/mean_length".into(), self.mean_length),
            ("completions/min_length".into(), self.min_length),
            ("completions/max_length".into(), self.max_length),
            ("completions/clipped_ratio".into(), self.clipped_ratio),
            ("kl".into(), self.kl),
            ("clip_ratio/low_mean".into(), self.clip_low),
            ("clip_ratio/high_mean".into(), self.clip_high),
            ("clip_ratio/region_mean".into(), self.clip_region),
            ("time/generation".into(), self.generation_seconds),
            ("time/training".into(), self.training_seconds),
        ];
        for (i, (mean, std)) in self.rewards_per_func.iter().enumerate() {
            out.push((format!("rewards/{i}/mean"), *mean));
            out.push((format!("rewards/{i}/std"), *std));
        }
        out
    }
}

pub struct GrpoReport {
    pub step: StepReport,
    pub metrics: GrpoMetrics,
    pub completions: Completions,
    /// Weighted reward and advantage per completion.
    pub rewards: Vec<f64>,
    pub advantages: Vec<f64>,
}

pub struct GrpoTrainer<B: AutodiffBackend> {
    pub trainer: Trainer<B>,
    pub config: GrpoConfig,
    /// Only when β > 0.
    pub reference: Option<Reference<B>>,
    rollouts: u64,
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn std(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

impl<B: AutodiffBackend> GrpoTrainer<B> {
    /// Checks the settings and that the policy trains something; with β > 0 resolves the
    /// reference as DPO does (`ref_adapter`, a model, or adapters disabled).
    pub fn new(
        trainer: Trainer<B>,
        config: GrpoConfig,
        model: &Llama<B>,
        reference: Option<Llama<B>>,
        ref_adapter: Option<&str>,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        if model.param_count().trainable == 0 {
            return Err(TrainError::NothingToTrain);
        }
        let reference = if config.objective.beta > 0.0 {
            Some(Reference::resolve(model, reference, ref_adapter)?)
        } else {
            None
        };
        Ok(Self {
            trainer,
            config,
            reference,
            rollouts: 0,
        })
    }

    /// The sampling settings of this step's rollout (a new seed each step).
    fn rollout_options(&self) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.config.objective.max_completion_length,
            temperature: self.config.temperature,
            top_p: self.config.top_p,
            top_k: self.config.top_k,
            seed: rollout_seed(self.config.seed, self.rollouts),
            stop: self.config.eos.clone(),
        }
    }

    /// One GRPO step over `prompts` (token ids): `num_generations` completions each, scored
    /// by `score`, which returns one row of rewards per completion (one per reward function;
    /// NaN where a function has no opinion, skipped in the weighted sum as TRL's `nansum`),
    /// then one update split into the trainer's `accumulate` micro-batches of whole groups.
    /// `stop(i, tokens)` ends completion `i` early (stop strings).
    pub fn step(
        &mut self,
        model: &mut Llama<B>,
        prompts: &[Vec<u32>],
        stop: impl FnMut(usize, &[u32]) -> bool,
        score: impl FnOnce(&Completions) -> Result<Vec<Vec<f64>>, TrainError>,
    ) -> Result<GrpoReport, TrainError> {
        if prompts.is_empty() {
            return Err(TrainError::Invalid("GRPO step got no prompts".into()));
        }
        let g = self.config.num_generations;
        let k = self.trainer.options.accumulate;
        if k > prompts.len() {
            return Err(TrainError::Accumulate {
                accumulate: k,
                batch: prompts.len(),
            });
        }
        let started = Instant::now();
        let repeated: Vec<Vec<u32>> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.clone(), g))
            .collect();
        let opts = self.rollout_options();
        self.rollouts += 1;
        let batch = sample(model, &repeated, &opts, stop)?;
        let ref_logps = match &self.reference {
            Some(r) => Some(completion_logps(
                &r.model(model),
                &batch,
                self.config.temperature,
            )),
            None => None,
        };
        let generation_seconds = started.elapsed().as_secs_f64();

        let per_func = score(&batch)?;
        let rewards = self.weighted_rewards(&per_func, batch.len())?;
        let advantages = group_advantages(&rewards, g, self.config.scale_rewards);

        let started = Instant::now();
        let objective = self.config.objective;
        let temperature = self.config.temperature;
        let step_tokens = batch.tokens();
        let sequences = batch.len();
        let groups_per_micro = prompts.len().div_ceil(k);
        let mut losses = Vec::new();
        let tokens = batch.prompts.iter().map(Vec::len).sum::<usize>() + step_tokens;
        let report =
            self.trainer
                .step_with(model, tokens, step_tokens, |_, model, loss_scale, grads| {
                    let mut total = 0.0;
                    for start in (0..prompts.len()).step_by(groups_per_micro) {
                        let end = (start + groups_per_micro).min(prompts.len());
                        let rows = start * g..end * g;
                        let micro = batch.slice(rows.clone());
                        let micro_adv = &advantages[rows.clone()];
                        let micro_ref = ref_logps.as_ref().map(|r| r[rows.clone()].to_vec());
                        let micro_count = prompts.len().div_ceil(groups_per_micro);
                        let (loss, _, value) =
                            backward_through_logps(model, &micro, temperature, grads, |logps| {
                                let v = micro_loss(
                                    &objective,
                                    micro_adv,
                                    logps,
                                    micro_ref.as_deref(),
                                    sequences,
                                    step_tokens,
                                    micro_count,
                                );
                                let grad = v
                                    .grad
                                    .iter()
                                    .map(|s| s.iter().map(|d| d * loss_scale).collect())
                                    .collect();
                                (v.loss, grad, v)
                            });
                        total += loss;
                        losses.push((micro.tokens(), value));
                        if !loss.is_finite() {
                            break;
                        }
                    }
                    Ok(total)
                })?;
        let training_seconds = started.elapsed().as_secs_f64();
        let metrics = self.metrics(
            &batch,
            &per_func,
            &rewards,
            &losses,
            generation_seconds,
            training_seconds,
        );
        Ok(GrpoReport {
            step: report,
            metrics,
            completions: batch,
            rewards,
            advantages,
        })
    }

    fn weighted_rewards(&self, per_func: &[Vec<f64>], rows: usize) -> Result<Vec<f64>, TrainError> {
        if per_func.len() != rows {
            return Err(TrainError::Invalid(format!(
                "the reward functions scored {} completions, expected {rows}",
                per_func.len()
            )));
        }
        let funcs = per_func.first().map_or(0, Vec::len);
        let weights = match &self.config.reward_weights {
            Some(w) if w.len() != funcs => {
                return Err(TrainError::Invalid(format!(
                    "reward_weights has {} weights for {funcs} reward functions",
                    w.len()
                )));
            }
            Some(w) => w.clone(),
            None => vec![1.0; funcs],
        };
        Ok(per_func
            .iter()
            .map(|row| {
                row.iter()
                    .zip(&weights)
                    .filter(|(r, _)| !r.is_nan())
                    .map(|(r, w)| r * w)
                    .sum()
            })
            .collect())
    }

    fn metrics(
        &self,
        batch: &Completions,
        per_func: &[Vec<f64>],
        rewards: &[f64],
        losses: &[(usize, GrpoLossValue)],
        generation_seconds: f64,
        training_seconds: f64,
    ) -> GrpoMetrics {
        let g = self.config.num_generations;
        let group_stds: Vec<f64> = rewards.chunks(g).map(std).collect();
        let lengths: Vec<f64> = batch.completions.iter().map(|c| c.len() as f64).collect();
        let funcs = per_func.first().map_or(0, Vec::len);
        let rewards_per_func = (0..funcs)
            .map(|f| {
                let col: Vec<f64> = per_func
                    .iter()
                    .map(|r| r[f])
                    .filter(|x| !x.is_nan())
                    .collect();
                (mean(&col), std(&col))
            })
            .collect();
        // Token-weighted means over the micro-batches.
        let tokens: usize = losses.iter().map(|(n, _)| n).sum::<usize>().max(1);
        let weighted = |f: fn(&GrpoLossValue) -> f64| {
            losses.iter().map(|(n, v)| f(v) * *n as f64).sum::<f64>() / tokens as f64
        };
        GrpoMetrics {
            reward: mean(rewards),
            reward_std: mean(&group_stds),
            rewards_per_func,
            frac_reward_zero_std: group_stds.iter().filter(|&&s| s == 0.0).count() as f64
                / group_stds.len().max(1) as f64,
            mean_length: mean(&lengths),
            min_length: lengths.iter().copied().fold(f64::INFINITY, f64::min),
            max_length: lengths.iter().copied().fold(0.0, f64::max),
            clipped_ratio: batch.ended.iter().filter(|&&e| !e).count() as f64
                / batch.len().max(1) as f64,
            kl: weighted(|v| v.kl),
            clip_low: weighted(|v| v.clip_low),
            clip_high: weighted(|v| v.clip_high),
            clip_region: weighted(|v| v.clip_region),
            generation_seconds,
            training_seconds,
        }
    }
}

/// One micro-batch's share of the step's loss: `grpo` and `dr_grpo` normalise by the step's
/// sequences, `dapo` by its tokens, `bnpo` by the micro-batch's tokens and the number of
/// micro-batches (as TRL's gradient accumulation divides it).
fn micro_loss(
    objective: &GrpoObjective,
    advantages: &[f64],
    logps: &[Vec<f64>],
    ref_logps: Option<&[Vec<f64>]>,
    sequences_in_step: usize,
    tokens_in_step: usize,
    micro_batches: usize,
) -> GrpoLossValue {
    // μ = 1: the old log-probs are these, so ρ = 1 and only the gradient flows.
    let mut v = grpo_loss(
        objective,
        advantages,
        logps,
        logps,
        ref_logps,
        tokens_in_step,
    );
    let share = match objective.loss {
        GrpoLoss::Grpo | GrpoLoss::DrGrpo => logps.len() as f64 / sequences_in_step.max(1) as f64,
        GrpoLoss::Bnpo => 1.0 / micro_batches.max(1) as f64,
        GrpoLoss::Dapo => 1.0,
    };
    v.loss *= share;
    for s in &mut v.grad {
        s.iter_mut().for_each(|d| *d *= share);
    }
    v
}
