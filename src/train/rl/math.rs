//! The formulas of online RL as Hugging Face TRL computes them, on plain `f64` values: KL
//! estimators, whitening, GAE, PPO's clipped policy and value losses, the adaptive KL
//! controller, and GRPO's group advantages and losses. Each loss also returns its gradient
//! with respect to the per-token log-probs (or values) it was given, which the trainers hand
//! to the model's backward pass (`head_loss::token_logps`).
//!
//! Sequences are ragged: `xs[s]` holds the values of sequence `s`'s completion tokens only,
//! where TRL holds a padded `[batch, length]` tensor and a mask. A masked mean over the batch
//! is the mean over every token of every sequence.

/// How the per-token KL to the reference is estimated from one sample (Schulman's k1, k3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KlEstimator {
    /// `logπ − logπ_ref`: unbiased, can be negative.
    K1,
    /// `(r − 1) − log r` with `r = π_ref/π`: unbiased and never negative.
    K3,
}

impl KlEstimator {
    pub const NAMES: [&'static str; 2] = ["k1", "k3"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "k1" => Some(Self::K1),
            "k3" => Some(Self::K3),
            _ => None,
        }
    }

    /// The estimate for one token.
    pub fn kl(self, logp: f64, ref_logp: f64) -> f64 {
        let logr = ref_logp - logp;
        match self {
            Self::K1 => -logr,
            Self::K3 => logr.exp_m1() - logr,
        }
    }

    /// `d kl / d logp`.
    pub fn dkl_dlogp(self, logp: f64, ref_logp: f64) -> f64 {
        match self {
            Self::K1 => 1.0,
            Self::K3 => 1.0 - (ref_logp - logp).exp(),
        }
    }
}

fn count(xs: &[Vec<f64>]) -> usize {
    xs.iter().map(Vec::len).sum()
}

/// The mean over every token (TRL's `masked_mean`); 0 for no tokens.
pub fn masked_mean(xs: &[Vec<f64>]) -> f64 {
    let n = count(xs);
    if n == 0 {
        return 0.0;
    }
    xs.iter().flatten().sum::<f64>() / n as f64
}

/// The variance over every token, with Bessel's correction when `unbiased` (TRL's
/// `masked_var`, which refuses a single token there; this returns 0 for it).
pub fn masked_var(xs: &[Vec<f64>], unbiased: bool) -> f64 {
    let n = count(xs);
    if n == 0 {
        return 0.0;
    }
    let mean = masked_mean(xs);
    let var = xs.iter().flatten().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
    match (unbiased, n) {
        (true, 1) => 0.0,
        (true, _) => var * n as f64 / (n - 1) as f64,
        (false, _) => var,
    }
}

/// `(x − mean)/√(var + 1e-8)` over every token, the mean added back unless `shift_mean`
/// (TRL's `masked_whiten`; unbiased variance).
pub fn whiten(xs: &[Vec<f64>], shift_mean: bool) -> Vec<Vec<f64>> {
    let mean = masked_mean(xs);
    let inv = 1.0 / (masked_var(xs, true) + 1e-8).sqrt();
    let back = if shift_mean { 0.0 } else { mean };
    xs.iter()
        .map(|s| s.iter().map(|x| (x - mean) * inv + back).collect())
        .collect()
}

/// Generalised advantage estimation over one completion (TRL's PPO loop): the value after
/// the last token is 0. Returns the advantages and the returns `advantages + values`.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut advantages = vec![0.0; n];
    let mut last = 0.0;
    for t in (0..n).rev() {
        let next = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next - values[t];
        last = delta + gamma * lam * last;
        advantages[t] = last;
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    (advantages, returns)
}

/// PPO's per-token rewards for one completion: `−kl_coef · kl` at every token and the score
/// added at the last one. Returns the rewards and the per-token KL.
///
/// TRL adds the score one position after the last token when the completion is shorter than
/// the batch's longest (its `sequence_lengths + 1`, the first padding position, which its
/// value loss then also covers); here it lands on the last completion token, as in
/// InstructGPT and TRL's own docs.
pub fn ppo_token_rewards(
    logps: &[f64],
    ref_logps: &[f64],
    estimator: KlEstimator,
    kl_coef: f64,
    score: f64,
) -> (Vec<f64>, Vec<f64>) {
    let kl: Vec<f64> = logps
        .iter()
        .zip(ref_logps)
        .map(|(&p, &r)| estimator.kl(p, r))
        .collect();
    let mut rewards: Vec<f64> = kl.iter().map(|k| -kl_coef * k).collect();
    if let Some(last) = rewards.last_mut() {
        *last += score;
    }
    (rewards, kl)
}

/// `d min(a, b)/da` as autograd computes it: 1 when a is the smaller, ½ on a tie.
fn min_share(a: f64, b: f64) -> f64 {
    if a < b {
        1.0
    } else if a == b {
        0.5
    } else {
        0.0
    }
}

/// `d clamp(x, lo, hi)/dx`: 1 inside the closed interval (PyTorch's rule), else 0.
fn clamp_grad(x: f64, lo: f64, hi: f64) -> f64 {
    if x >= lo && x <= hi { 1.0 } else { 0.0 }
}

/// The clipped surrogate `−min(A·ρ, A·clip(ρ, 1−ε_low, 1+ε_high))` of one token with
/// `ρ = exp(logp − old)`, and its derivative with respect to `logp`.
fn clipped_surrogate(
    logp: f64,
    old: f64,
    advantage: f64,
    eps_low: f64,
    eps_high: f64,
) -> (f64, f64) {
    let ratio = (logp - old).exp();
    let (lo, hi) = (1.0 - eps_low, 1.0 + eps_high);
    let clipped = ratio.clamp(lo, hi);
    let (a, b) = (advantage * ratio, advantage * clipped);
    let loss = -a.min(b);
    // d/dlogp of A·ρ is A·ρ; of A·clip(ρ) is A·ρ inside the interval.
    let grad = -(min_share(a, b) * advantage * ratio
        + min_share(b, a) * advantage * ratio * clamp_grad(ratio, lo, hi));
    (loss, grad)
}

/// PPO's policy loss and what TRL logs of it, over a micro-batch.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyLoss {
    /// The masked mean of `max(−A·ρ, −A·clip(ρ, 1±ε))`.
    pub loss: f64,
    /// Tokens where the clipped term is the larger loss (`policy/clipfrac_avg`).
    pub clipfrac: f64,
    /// `½·mean((logp − old)²)` over the tokens (`policy/approxkl_avg`).
    pub approxkl: f64,
    /// Mean of `ρ` over the tokens (`val/ratio`).
    pub ratio_mean: f64,
    /// `d loss / d logp` per token.
    pub grad: Vec<Vec<f64>>,
}

pub fn ppo_policy_loss(
    logps: &[Vec<f64>],
    old_logps: &[Vec<f64>],
    advantages: &[Vec<f64>],
    cliprange: f64,
) -> PolicyLoss {
    let n = count(logps).max(1) as f64;
    let (mut loss, mut clipped, mut approxkl, mut ratio_sum) = (0.0, 0.0, 0.0, 0.0);
    let mut grad = Vec::with_capacity(logps.len());
    for ((p, o), a) in logps.iter().zip(old_logps).zip(advantages) {
        let mut g = Vec::with_capacity(p.len());
        for t in 0..p.len() {
            let (l, d) = clipped_surrogate(p[t], o[t], a[t], cliprange, cliprange);
            let ratio = (p[t] - o[t]).exp();
            loss += l;
            g.push(d / n);
            let unclipped = -a[t] * ratio;
            let clip = -a[t] * ratio.clamp(1.0 - cliprange, 1.0 + cliprange);
            clipped += f64::from(u8::from(clip > unclipped));
            approxkl += 0.5 * (p[t] - o[t]).powi(2);
            ratio_sum += ratio;
        }
        grad.push(g);
    }
    PolicyLoss {
        loss: loss / n,
        clipfrac: clipped / n,
        approxkl: approxkl / n,
        ratio_mean: ratio_sum / n,
        grad,
    }
}

/// PPO's value loss `½·mean(max((V − R)², (V_clip − R)²))`, `V_clip` the new value clipped to
/// within `cliprange_value` of the rollout's.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueLoss {
    pub loss: f64,
    /// Tokens where the clipped term is the larger (`val/clipfrac_avg`).
    pub clipfrac: f64,
    /// `d loss / d V` per token.
    pub grad: Vec<Vec<f64>>,
}

pub fn ppo_value_loss(
    values: &[Vec<f64>],
    old_values: &[Vec<f64>],
    returns: &[Vec<f64>],
    cliprange_value: f64,
) -> ValueLoss {
    let n = count(values).max(1) as f64;
    let (mut loss, mut clipped) = (0.0, 0.0);
    let mut grad = Vec::with_capacity(values.len());
    for ((v, o), r) in values.iter().zip(old_values).zip(returns) {
        let mut g = Vec::with_capacity(v.len());
        for t in 0..v.len() {
            let (lo, hi) = (o[t] - cliprange_value, o[t] + cliprange_value);
            let vc = v[t].clamp(lo, hi);
            let (l1, l2) = ((v[t] - r[t]).powi(2), (vc - r[t]).powi(2));
            loss += l1.max(l2);
            clipped += f64::from(u8::from(l2 > l1));
            // max picks l1 when larger (½ each on a tie).
            let d = min_share(l2, l1) * 2.0 * (v[t] - r[t])
                + min_share(l1, l2) * 2.0 * (vc - r[t]) * clamp_grad(v[t], lo, hi);
            g.push(0.5 * d / n);
        }
        grad.push(g);
    }
    ValueLoss {
        loss: 0.5 * loss / n,
        clipfrac: clipped / n,
        grad,
    }
}

/// The adaptive KL coefficient of Ziegler et al. (TRL's former `AdaptiveKLController`): after
/// `n_steps` samples with mean KL `current`, `coef ×= 1 + clip(current/target − 1, ±0.2)·n/horizon`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptiveKl {
    pub value: f64,
    pub target: f64,
    pub horizon: f64,
}

impl AdaptiveKl {
    pub fn update(&mut self, current: f64, n_steps: usize) {
        let error = (current / self.target - 1.0).clamp(-0.2, 0.2);
        self.value *= 1.0 + error * n_steps as f64 / self.horizon;
    }
}

/// How GRPO scales the centred rewards (TRL's `scale_rewards`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleRewards {
    /// By the standard deviation within each prompt's group (the original GRPO).
    Group,
    /// By the standard deviation over the whole batch.
    Batch,
    /// Not at all (Dr. GRPO).
    None,
}

impl ScaleRewards {
    pub const NAMES: [&'static str; 3] = ["group", "batch", "none"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "group" => Some(Self::Group),
            "batch" => Some(Self::Batch),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

fn std_unbiased(xs: &[f64]) -> f64 {
    let n = xs.len();
    if n < 2 {
        return f64::NAN;
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
}

/// GRPO's advantages: each reward minus its group's mean (rewards come in consecutive groups
/// of `group` completions of one prompt), divided by `std + 1e-4` as `scale` says (the
/// unbiased standard deviation, as `torch.std`).
pub fn group_advantages(rewards: &[f64], group: usize, scale: ScaleRewards) -> Vec<f64> {
    let group = group.max(1);
    let batch_std = std_unbiased(rewards);
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group) {
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        let std = match scale {
            ScaleRewards::Group => std_unbiased(g),
            ScaleRewards::Batch => batch_std,
            ScaleRewards::None => 0.0,
        };
        for r in g {
            out.push(match scale {
                ScaleRewards::None => r - mean,
                _ => (r - mean) / (std + 1e-4),
            });
        }
    }
    out
}

/// How GRPO's per-token losses are averaged (TRL's `loss_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpoLoss {
    /// Mean over each sequence's tokens, then over sequences (the original GRPO; favours
    /// short completions).
    Grpo,
    /// Sum over the batch's tokens divided by their number.
    Bnpo,
    /// Sum over tokens divided by `sequences × max_completion_length` (Dr. GRPO).
    DrGrpo,
    /// Sum over tokens divided by the whole step's token count (DAPO; with one micro-batch
    /// the same as `bnpo`).
    Dapo,
}

impl GrpoLoss {
    pub const NAMES: [&'static str; 4] = ["grpo", "bnpo", "dr_grpo", "dapo"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "grpo" => Some(Self::Grpo),
            "bnpo" => Some(Self::Bnpo),
            "dr_grpo" => Some(Self::DrGrpo),
            "dapo" => Some(Self::Dapo),
            _ => None,
        }
    }
}

/// GRPO's objective settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GrpoObjective {
    pub loss: GrpoLoss,
    pub epsilon_low: f64,
    pub epsilon_high: f64,
    /// KL coefficient (k3 estimator); 0 leaves the reference out.
    pub beta: f64,
    /// Weight each token's KL by its importance ratio `ρ` (TRL's `use_bias_correction_kl`,
    /// on by default there): the KL is then estimated under the policy that sampled.
    pub bias_correction_kl: bool,
    pub max_completion_length: usize,
}

/// GRPO's loss over a batch and what TRL logs of it.
#[derive(Clone, Debug, PartialEq)]
pub struct GrpoLossValue {
    pub loss: f64,
    /// Mean per-token KL (k3, times ρ with the bias correction) to the reference over the
    /// tokens; 0 when β = 0.
    pub kl: f64,
    /// Tokens with ρ < 1 − ε_low and a negative advantage (`clip_ratio/low_mean`).
    pub clip_low: f64,
    /// Tokens with ρ > 1 + ε_high and a positive advantage (`clip_ratio/high_mean`).
    pub clip_high: f64,
    /// Either (`clip_ratio/region_mean`).
    pub clip_region: f64,
    /// `d loss / d logp` per token.
    pub grad: Vec<Vec<f64>>,
}

/// GRPO's loss: per token `−min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) + β·k3` (`β·ρ·k3` with
/// the bias correction), averaged as
/// `objective.loss` says. `tokens_in_step` is DAPO's normaliser: the completion tokens of the
/// whole optimiser step (more than `logps` holds when this is one micro-batch of several).
pub fn grpo_loss(
    objective: &GrpoObjective,
    advantages: &[f64],
    logps: &[Vec<f64>],
    old_logps: &[Vec<f64>],
    ref_logps: Option<&[Vec<f64>]>,
    tokens_in_step: usize,
) -> GrpoLossValue {
    let tokens = count(logps);
    let sequences = logps.len();
    let (mut total, mut kl_sum, mut low, mut high, mut region) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut grad = Vec::with_capacity(sequences);
    for (s, (p, o)) in logps.iter().zip(old_logps).enumerate() {
        let a = advantages[s];
        // Each token's weight in the average.
        let weight = match objective.loss {
            GrpoLoss::Grpo => 1.0 / (p.len().max(1) as f64 * sequences.max(1) as f64),
            GrpoLoss::Bnpo => 1.0 / tokens.max(1) as f64,
            GrpoLoss::DrGrpo => {
                1.0 / (sequences.max(1) * objective.max_completion_length.max(1)) as f64
            }
            GrpoLoss::Dapo => 1.0 / tokens_in_step.max(1) as f64,
        };
        let mut g = Vec::with_capacity(p.len());
        for t in 0..p.len() {
            let (mut l, mut d) =
                clipped_surrogate(p[t], o[t], a, objective.epsilon_low, objective.epsilon_high);
            if objective.beta != 0.0
                && let Some(r) = ref_logps
            {
                let (kl, dkl) = (
                    KlEstimator::K3.kl(p[t], r[s][t]),
                    KlEstimator::K3.dkl_dlogp(p[t], r[s][t]),
                );
                // With the correction: ρ·kl, whose derivative is ρ·kl + ρ·dkl (dρ/dlogp = ρ).
                let (kl, dkl) = if objective.bias_correction_kl {
                    let ratio = (p[t] - o[t]).exp();
                    (ratio * kl, ratio * (kl + dkl))
                } else {
                    (kl, dkl)
                };
                l += objective.beta * kl;
                d += objective.beta * dkl;
                kl_sum += kl;
            }
            total += weight * l;
            g.push(weight * d);
            let ratio = (p[t] - o[t]).exp();
            let is_low = ratio < 1.0 - objective.epsilon_low && a < 0.0;
            let is_high = ratio > 1.0 + objective.epsilon_high && a > 0.0;
            low += f64::from(u8::from(is_low));
            high += f64::from(u8::from(is_high));
            region += f64::from(u8::from(is_low || is_high));
        }
        grad.push(g);
    }
    let n = tokens.max(1) as f64;
    GrpoLossValue {
        loss: total,
        kl: kl_sum / n,
        clip_low: low / n,
        clip_high: high / n,
        clip_region: region / n,
        grad,
    }
}
