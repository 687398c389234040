//! KronA (Edalati et al., 2022): a full-rank Kronecker update `ΔW = s·(A ⊗ B)` beside a
//! projection, with `A` `[a1, a2]` and `B` `[b1, b2]`, `a1·b1 = d_out`, `a2·b2 = d_in`, each
//! pair the factors nearest √d (PEFT's `factorization`, as LoKr splits). Unlike LoKr neither
//! factor is low-rank. `A` starts Kaiming-uniform and `B` zero, so a fresh adapter changes
//! nothing; it merges into the weight like LoRA. The update is computed as
//! `vec(B·X·Aᵀ)` without forming `A ⊗ B` (the model's [`KronAdapter`]).
//!
//! KronA^B_res (`placement = "ffn"`) puts one Kronecker adapter `d → d` beside the MLP block
//! instead, reading the MLP's input `h` and adding `s·h·(A ⊗ B) + γ·h` to its output, with a
//! learned residual scale `γ`. The paper leaves γ's start open; runner starts it at 0, so
//! this variant is a no-op at first too. It cannot be merged (it sits beside a non-linear
//! block).

use burn::prelude::*;

use super::PeftError;
use super::lokr::{factorization, matrix};
use super::targets::Targets;
use crate::model::Llama;
use crate::model::adapters::kron::{Factor, KronAdapter, KronParallel};
use crate::model::init::{self, HostRng};
use crate::model::params::Param;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KronaPlacement {
    /// Beside each targeted projection (KronA).
    Projections,
    /// Beside each layer's MLP block, with a learned residual (KronA^B_res).
    Ffn,
}

/// `runner.peft.krona{...}`: the paper's setting, q and v, scale 1.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KronaConfig {
    pub placement: KronaPlacement,
    /// The projections adapted (placement "projections" only).
    pub targets: Targets,
    /// The update's scale `s`.
    pub scale: f64,
    pub seed: u64,
}

impl Default for KronaConfig {
    fn default() -> Self {
        Self {
            placement: KronaPlacement::Projections,
            targets: Targets::names(&["q_proj", "v_proj"]),
            scale: 1.0,
            seed: 0,
        }
    }
}

impl KronaConfig {
    pub(crate) fn validate(&self) -> Result<(), PeftError> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(PeftError::Invalid(format!(
                "KronA scale must be a positive finite number (got {})",
                self.scale
            )));
        }
        self.targets.validate()
    }
}

/// The Kronecker factors for `d_in -> d_out`: `A` `[a1, a2]` Kaiming-uniform, `B` `[b1, b2]`
/// zero.
fn new_kron<B: Backend>(
    d_in: usize,
    d_out: usize,
    scale: f64,
    rng: &mut HostRng,
    device: &B::Device,
) -> KronAdapter<B> {
    let (a2, b2) = factorization(d_in, -1);
    let (a1, b1) = factorization(d_out, -1);
    KronAdapter {
        w1: Factor::Full(matrix(a1, a2, false, rng, device)),
        w2: Factor::Full(matrix(b1, b2, true, rng, device)),
        scale,
        rank_dropout: 0.0,
        rank_dropout_scale: false,
        module_dropout: 0.0,
        merged: false,
    }
}

/// Adds a KronA adapter named `name` and makes it active; returns the parameters added.
pub(crate) fn attach<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &KronaConfig,
) -> Result<usize, PeftError> {
    config.validate()?;
    let modules = match config.placement {
        KronaPlacement::Projections => config
            .targets
            .resolve(model.config.num_hidden_layers, model.config.projections())?,
        KronaPlacement::Ffn => Vec::new(),
    };
    super::begin_adapter(model, name)?;
    let device = model.device.clone();
    let mut added = 0;
    for (i, t) in modules {
        let lin = model.layers[i].proj_mut(t);
        let mut rng = init::rng_for(config.seed, &format!("krona.layers.{i}.{t}"));
        let adapter = new_kron(lin.d_in(), lin.d_out(), config.scale, &mut rng, &device);
        added += adapter.numel();
        lin.kron.insert(name, adapter);
    }
    if config.placement == KronaPlacement::Ffn {
        let d = model.config.hidden_size;
        for (i, layer) in model.layers.iter_mut().enumerate() {
            let mut rng = init::rng_for(config.seed, &format!("krona.layers.{i}.mlp"));
            let adapter = KronParallel {
                kron: new_kron(d, d, config.scale, &mut rng, &device),
                residual: Param::new(Tensor::zeros([1], &device), true),
            };
            added += adapter.numel();
            layer.mlp_parallel.insert(name, adapter);
        }
    }
    super::finish_adapter(model, name, super::Method::Krona(config.clone()));
    Ok(added)
}
