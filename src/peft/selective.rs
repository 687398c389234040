//! Methods that train a subset of the model's own kind of parameters.
//! - BitFit (Ben Zaken et al. 2021) trains biases only. Llama's projections have no biases, so
//!   it adds zero-initialised ones (a no-op until trained) to the targeted projections.
//! - LN tuning (Zhao et al. 2023, PEFT's LN_TUNING) trains copies of the RMSNorm weights.
//! - Full fine-tuning makes every base parameter trainable (not a named adapter).

use burn::prelude::*;

use super::PeftError;
use super::targets::Targets;
use crate::model::Llama;
use crate::model::params::{Param, SetTrainable};

#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BitFitConfig {
    pub targets: Targets,
}

impl Default for BitFitConfig {
    fn default() -> Self {
        Self {
            targets: Targets::AllLinear,
        }
    }
}

pub(crate) fn attach_bitfit<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &BitFitConfig,
) -> Result<usize, PeftError> {
    let modules = config
        .targets
        .resolve(model.config.num_hidden_layers, model.config.projections())?;
    super::begin_adapter(model, name)?;
    let device = model.device.clone();
    let mut added = 0;
    for (i, t) in modules {
        let lin = model.layers[i].proj_mut(t);
        added += lin.d_out();
        lin.bias.insert(
            name,
            Param::new(Tensor::zeros([lin.d_out()], &device), true),
        );
    }
    super::finish_adapter(model, name, super::Method::BitFit(config.clone()));
    Ok(added)
}

pub(crate) fn attach_ln_tuning<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
) -> Result<usize, PeftError> {
    super::begin_adapter(model, name)?;
    let copy = |p: &Param<B, 1>| Param::new(p.value.clone().detach(), true);
    let mut added = 0;
    for layer in &mut model.layers {
        layer
            .input_norm_tuned
            .insert(name, copy(&layer.input_layernorm));
        layer.post_norm_tuned.insert(name, copy(&layer.mlp_norm));
        added += 2 * layer.input_layernorm.numel();
        // Gemma's norms of the sub-blocks' outputs, as PEFT's LN tuning targets them too.
        if let Some(w) = &layer.attn_out_norm {
            added += w.numel();
            layer.attn_out_norm_tuned.insert(name, copy(w));
        }
        if let Some(w) = &layer.mlp_out_norm {
            added += w.numel();
            layer.mlp_out_norm_tuned.insert(name, copy(w));
        }
    }
    let norm = copy(&model.norm);
    added += norm.numel();
    model.norm_tuned.insert(name, norm);
    super::finish_adapter(model, name, super::Method::LnTuning);
    Ok(added)
}

/// Every base parameter trainable. Adapters must be removed (or merged and unloaded) first,
/// since full fine-tuning trains the base itself.
pub(crate) fn full<B: Backend>(model: &mut Llama<B>) -> Result<usize, PeftError> {
    if let Some(a) = model.adapters.first() {
        return Err(PeftError::Invalid(format!(
            "full fine-tuning trains the base model, but adapter '{}' is attached; merge_and_unload() or remove it first",
            a.name
        )));
    }
    model.visit(&mut SetTrainable(true));
    Ok(model.param_count().trainable)
}
