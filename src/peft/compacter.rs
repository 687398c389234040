//! Compacter and Compacter++ (Mahabadi et al., 2021), as adapter-hub configures them: bottleneck
//! adapters whose down and up projections are parameterised hypercomplex multiplication (PHM)
//! layers, `W = Σ_{i=1..n} R_i ⊗ (s_i·t_iᵀ)`, with `n` (`phm_dim`) rule matrices `R_i` `[n, n]`
//! shared by every layer (one set for the down projections, one for the up ones) and each
//! `B_i = s_i·t_iᵀ` a rank-one product of the layer's own. Compacter sits where Houlsby's
//! adapters do (after attention and after the MLP), Compacter++ only after the MLP
//! (Pfeiffer). Defaults are adapter-hub's: reduction factor 32, n = 4, GELU, rules drawn from
//! normal(0, 1e-4) (`phm_c_init = "normal"`, `phm_init_range`), `s` and `t` Glorot-uniform,
//! biases zero. The rules start near zero, so a fresh adapter is close to the identity
//! (not exactly: adapter-hub's up projection is not zero).

use burn::prelude::*;

use super::PeftError;
use super::bottleneck::{self, Activation, Placement};
use crate::model::Llama;
use crate::model::adapters::bottleneck::{Bottleneck, PhmRules, Projection};
use crate::model::init::{self, HostRng};
use crate::model::params::Param;

/// `runner.peft.compacter{...}` (Houlsby placement) and `runner.peft.compacter_pp{...}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompacterConfig {
    pub placement: Placement,
    /// Bottleneck width = d_model / reduction_factor; both must split into `phm_dim` parts.
    pub reduction_factor: usize,
    /// `n`: the number of rule matrices and their size.
    pub phm_dim: usize,
    pub activation: Activation,
    /// The rules' initial standard deviation.
    pub phm_init_range: f64,
    pub seed: u64,
}

impl Default for CompacterConfig {
    fn default() -> Self {
        Self {
            placement: Placement::Houlsby,
            reduction_factor: 32,
            phm_dim: 4,
            activation: Activation::Gelu,
            phm_init_range: 1e-4,
            seed: 0,
        }
    }
}

/// Glorot-uniform `[rows, cols]` with the fans of the whole `[d_in/n, d_out/n]` block.
fn glorot<B: Backend>(
    rows: usize,
    cols: usize,
    fans: (usize, usize),
    rng: &mut HostRng,
    device: &B::Device,
) -> Param<B, 2> {
    let bound = (6.0 / (fans.0 + fans.1) as f64).sqrt();
    Param::new(
        init::tensor2(
            init::uniform_vec(rng, rows * cols, bound),
            [rows, cols],
            device,
        ),
        true,
    )
}

fn phm<B: Backend>(
    d_in: usize,
    d_out: usize,
    n: usize,
    rng: &mut HostRng,
    device: &B::Device,
) -> Projection<B> {
    let (p, q) = (d_in / n, d_out / n);
    Projection::Phm {
        s: glorot(n, p, (p, q), rng, device),
        t: glorot(n, q, (p, q), rng, device),
        bias: Param::new(Tensor::zeros([d_out], device), true),
    }
}

pub(crate) fn attach<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &CompacterConfig,
) -> Result<usize, PeftError> {
    let d = model.config.hidden_size;
    let m = bottleneck::width(d, config.reduction_factor)?;
    let n = config.phm_dim;
    if n == 0 || !d.is_multiple_of(n) || !m.is_multiple_of(n) {
        return Err(PeftError::Invalid(format!(
            "phm_dim {n} must divide the hidden size {d} and the bottleneck width {m} (d / reduction_factor {})",
            config.reduction_factor
        )));
    }
    if !(config.phm_init_range.is_finite() && config.phm_init_range > 0.0) {
        return Err(PeftError::Invalid(format!(
            "phm_init_range must be a positive finite number (got {})",
            config.phm_init_range
        )));
    }
    super::begin_adapter(model, name)?;
    let device = model.device.clone();
    let added = bottleneck::insert(model, name, config.placement, |label| {
        let mut rng = init::rng_for(config.seed, &format!("compacter.{label}"));
        Bottleneck {
            down: phm(d, m, n, &mut rng, &device),
            up: phm(m, d, n, &mut rng, &device),
            activation: config.activation,
        }
    });
    let mut rng = init::rng_for(config.seed, "compacter.rules");
    let mut rules = || {
        Param::new(
            init::tensor2::<B>(
                init::normal_vec(&mut rng, n * n * n, config.phm_init_range),
                [n * n, n],
                &device,
            ),
            true,
        )
    };
    let rules = PhmRules {
        down: rules(),
        up: rules(),
    };
    model.phm_rules.insert(name, rules);
    super::finish_adapter(model, name, super::Method::Compacter(config.clone()));
    Ok(added + 2 * n * n * n)
}
