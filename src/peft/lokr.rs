//! LoKr (low-rank Kronecker product; LyCORIS, and Hugging Face PEFT's `LoKrConfig`):
//! `ΔW = (α/r)·(W1 ⊗ W2)` beside a projection. `d_out = l·k` and `d_in = m·n` are split by
//! PEFT's `factorization` (the factor pair nearest √d, or `decompose_factor` when it divides);
//! `W2` `[k, n]` is the rank-r product `W2_a·W2_b` when `r < max(k, n)/2`, and with
//! `decompose_both` so is `W1` `[l, m]`. As in PEFT, W1 starts at zero and W2 Kaiming-uniform,
//! so a fresh adapter changes nothing. The layer itself is the model's [`KronAdapter`].

use burn::prelude::*;

use super::PeftError;
use super::targets::Targets;
use crate::model::Llama;
use crate::model::adapters::kron::{Factor, KronAdapter};
use crate::model::init::{self, HostRng};
use crate::model::params::Param;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LokrInit {
    /// W1 (or W1_a) zero, the rest Kaiming-uniform: a no-op at first (PEFT's
    /// `init_weights=True`).
    #[serde(alias = "default")]
    Peft,
    /// LyCORIS's: W2 (or W2_b) zero, the rest Kaiming-uniform; also a no-op.
    Lycoris,
    /// Every factor Kaiming-uniform (PEFT's `init_weights=False`): not a no-op.
    Random,
}

/// `runner.peft.lokr{...}`; the defaults are PEFT's `LoKrConfig` (r 8, alpha 8, q and v).
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LokrConfig {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Targets,
    /// Factor W1 into a rank-r product too (when r < max(l, m)/2).
    pub decompose_both: bool,
    /// Split each dimension as (f, d/f) when f divides it; -1: the pair nearest √d.
    pub decompose_factor: i64,
    pub rank_dropout: f64,
    pub rank_dropout_scale: bool,
    pub module_dropout: f64,
    pub init: LokrInit,
    pub seed: u64,
}

impl Default for LokrConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 8.0,
            targets: Targets::names(&["q_proj", "v_proj"]),
            decompose_both: false,
            decompose_factor: -1,
            rank_dropout: 0.0,
            rank_dropout_scale: false,
            module_dropout: 0.0,
            init: LokrInit::Peft,
            seed: 0,
        }
    }
}

impl LokrConfig {
    pub(crate) fn validate(&self) -> Result<(), PeftError> {
        if self.rank == 0 {
            return Err(PeftError::Rank(0));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(PeftError::Alpha(self.alpha));
        }
        for (what, p) in [
            ("rank_dropout", self.rank_dropout),
            ("module_dropout", self.module_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(PeftError::Invalid(format!(
                    "LoKr {what} must be in [0, 1) (got {p})"
                )));
            }
        }
        if self.decompose_factor == 0 || self.decompose_factor < -1 {
            return Err(PeftError::Invalid(format!(
                "LoKr decompose_factor must be -1 or positive (got {})",
                self.decompose_factor
            )));
        }
        self.targets.validate()
    }
}

/// PEFT's `factorization(dimension, factor)`: `(m, n)` with `m·n = dimension` and `m ≤ n`;
/// `(factor, dimension/factor)` when `factor` divides it, else the pair with the smallest sum
/// whose smaller side does not exceed `factor` (any, for -1).
pub(crate) fn factorization(dimension: usize, factor: i64) -> (usize, usize) {
    if factor > 0 && dimension.is_multiple_of(factor as usize) {
        let m = factor as usize;
        return (m, dimension / m);
    }
    let limit = if factor == -1 {
        dimension
    } else {
        factor.max(1) as usize
    };
    let (mut m, mut n) = (1, dimension);
    let length = m + n;
    while m < n {
        let mut new_m = m + 1;
        while !dimension.is_multiple_of(new_m) {
            new_m += 1;
        }
        let new_n = dimension / new_m;
        if new_m + new_n > length || new_m > limit {
            break;
        }
        (m, n) = (new_m, new_n);
    }
    if m > n { (n, m) } else { (m, n) }
}

/// A `[rows, cols]` matrix as `kaiming_uniform_(a=√5)` fills it (bound 1/√cols), or zeros.
pub(crate) fn matrix<B: Backend>(
    rows: usize,
    cols: usize,
    zero: bool,
    rng: &mut HostRng,
    device: &B::Device,
) -> Param<B, 2> {
    let t = if zero {
        Tensor::zeros([rows, cols], device)
    } else {
        init::tensor2(
            init::uniform_vec(rng, rows * cols, 1.0 / (cols as f64).sqrt()),
            [rows, cols],
            device,
        )
    };
    Param::new(t, true)
}

/// The adapter for a projection `d_in -> d_out`, shaped and initialised as PEFT's.
pub(crate) fn new_adapter<B: Backend>(
    d_in: usize,
    d_out: usize,
    config: &LokrConfig,
    rng: &mut HostRng,
    device: &B::Device,
) -> KronAdapter<B> {
    let (m, n) = factorization(d_in, config.decompose_factor);
    let (l, k) = factorization(d_out, config.decompose_factor);
    let r = config.rank;
    let low_w1 = config.decompose_both && (r as f64) < l.max(m) as f64 / 2.0;
    let low_w2 = (r as f64) < k.max(n) as f64 / 2.0;
    let (zero_w1, zero_w2) = match config.init {
        LokrInit::Peft => (true, false),
        LokrInit::Lycoris => (false, true),
        LokrInit::Random => (false, false),
    };
    // The zero goes to W1 itself or to W1_a (PEFT), to W2 or W2_b (LyCORIS).
    let w1 = if low_w1 {
        Factor::LowRank(
            matrix(l, r, zero_w1, rng, device),
            matrix(r, m, false, rng, device),
        )
    } else {
        Factor::Full(matrix(l, m, zero_w1, rng, device))
    };
    let w2 = if low_w2 {
        Factor::LowRank(
            matrix(k, r, false, rng, device),
            matrix(r, n, zero_w2, rng, device),
        )
    } else {
        Factor::Full(matrix(k, n, zero_w2, rng, device))
    };
    KronAdapter {
        w1,
        w2,
        scale: config.alpha / r as f64,
        rank_dropout: config.rank_dropout,
        rank_dropout_scale: config.rank_dropout_scale,
        module_dropout: config.module_dropout,
        merged: false,
    }
}

/// Adds a LoKr adapter named `name` to every targeted projection and makes it active.
/// Returns the parameters added.
pub(crate) fn attach<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &LokrConfig,
) -> Result<usize, PeftError> {
    config.validate()?;
    let modules = config
        .targets
        .resolve(model.config.num_hidden_layers, model.config.projections())?;
    super::begin_adapter(model, name)?;
    let device = model.device.clone();
    let mut added = 0;
    for (i, t) in modules {
        let lin = model.layers[i].proj_mut(t);
        let mut rng = init::rng_for(config.seed, &format!("lokr.layers.{i}.{t}"));
        let adapter = new_adapter(lin.d_in(), lin.d_out(), config, &mut rng, &device);
        added += adapter.numel();
        lin.kron.insert(name, adapter);
    }
    super::finish_adapter(model, name, super::Method::Lokr(config.clone()));
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factorization_is_peft_s() {
        // PEFT's docstring examples, and SmolLM2's sizes.
        assert_eq!(factorization(256, -1), (16, 16));
        assert_eq!(factorization(128, -1), (8, 16));
        assert_eq!(factorization(127, -1), (1, 127));
        assert_eq!(factorization(128, 4), (4, 32));
        assert_eq!(factorization(576, -1), (24, 24));
        assert_eq!(factorization(192, -1), (12, 16));
        assert_eq!(factorization(1536, -1), (32, 48));
        // A factor that does not divide bounds the smaller side.
        assert_eq!(factorization(96, 5), (4, 24));
    }
}
