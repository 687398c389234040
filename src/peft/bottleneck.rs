//! Bottleneck adapters: `h + up(act(down(h)))` inserted after a sublayer. Houlsby et al. (2019)
//! place one after the attention block and one after the MLP; Pfeiffer et al. (2021) only after
//! the MLP. The adapters are the model's [`Bottleneck`] layers, which start as the identity.

use burn::prelude::*;

use super::PeftError;
use crate::model::Llama;
use crate::model::adapters::bottleneck::Bottleneck;
use crate::model::init;

pub(crate) use crate::model::adapters::bottleneck::Activation;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    Houlsby,
    Pfeiffer,
}

#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BottleneckConfig {
    pub placement: Placement,
    /// Bottleneck width = d_model / reduction_factor.
    pub reduction_factor: usize,
    pub activation: Activation,
    pub seed: u64,
}

impl Default for BottleneckConfig {
    fn default() -> Self {
        Self {
            placement: Placement::Houlsby,
            reduction_factor: 16,
            activation: Activation::Relu,
            seed: 0,
        }
    }
}

pub(crate) fn attach<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &BottleneckConfig,
) -> Result<usize, PeftError> {
    let m = width(model.config.hidden_size, config.reduction_factor)?;
    super::begin_adapter(model, name)?;
    let d = model.config.hidden_size;
    let device = model.device.clone();
    let added = insert(model, name, config.placement, |label| {
        let mut rng = init::rng_for(config.seed, &format!("bottleneck.{label}"));
        Bottleneck::new(d, m, config.activation, &mut rng, &device)
    });
    super::finish_adapter(model, name, super::Method::Bottleneck(config.clone()));
    Ok(added)
}

/// The bottleneck width `d / reduction_factor`, checked.
pub(crate) fn width(d: usize, reduction_factor: usize) -> Result<usize, PeftError> {
    if reduction_factor == 0 || reduction_factor > d {
        return Err(PeftError::Invalid(format!(
            "reduction_factor must be in 1..={d} (got {reduction_factor})"
        )));
    }
    Ok(d / reduction_factor)
}

/// Puts an adapter from `build` after each layer's attention block (Houlsby only) and MLP,
/// under `name`; `build` gets the place (`layers.3.attn`, `layers.3.mlp`) for its generator.
/// Returns the parameters added.
pub(crate) fn insert<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    placement: Placement,
    mut build: impl FnMut(&str) -> Bottleneck<B>,
) -> usize {
    let mut added = 0;
    for (i, layer) in model.layers.iter_mut().enumerate() {
        if placement == Placement::Houlsby {
            let a = build(&format!("layers.{i}.attn"));
            added += a.numel();
            layer.attn_adapter.insert(name, a);
        }
        let a = build(&format!("layers.{i}.mlp"));
        added += a.numel();
        layer.mlp_adapter.insert(name, a);
    }
    added
}
