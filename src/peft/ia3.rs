//! (IA)3 (Liu et al. 2022): learned vectors that rescale activations. As in Hugging Face PEFT
//! for Llama, the outputs of k_proj and v_proj and the input of down_proj (the MLP's
//! intermediate activation) are rescaled; vectors start at one, so a fresh adapter is a no-op.
//! The vectors are the model's [`Ia3Vector`]s.

use burn::prelude::*;

use super::PeftError;
use super::targets::Targets;
use crate::model::Llama;
use crate::model::adapters::ia3::Ia3Vector;

/// PEFT's `IA3Config` defaults for Llama: k, v and down projections, down's input rescaled.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ia3Config {
    pub targets: Targets,
    /// Targets whose input (not output) is rescaled; a subset of `targets`.
    pub feedforward: Targets,
}

impl Default for Ia3Config {
    fn default() -> Self {
        Self {
            targets: Targets::names(&["k_proj", "v_proj", "down_proj"]),
            feedforward: Targets::names(&["down_proj"]),
        }
    }
}

pub(crate) fn attach<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &Ia3Config,
) -> Result<usize, PeftError> {
    let (layers, kinds) = (model.config.num_hidden_layers, model.config.projections());
    let modules = config.targets.resolve(layers, kinds)?;
    let ff = config.feedforward.resolve(layers, kinds)?;
    if let Some(&(i, t)) = ff.iter().find(|m| !modules.contains(m)) {
        return Err(PeftError::Invalid(format!(
            "feedforward module layers.{i}.{t} is not among the (IA)3 targets"
        )));
    }
    super::begin_adapter(model, name)?;
    let device = model.device.clone();
    let mut added = 0;
    for (i, t) in modules {
        let on_input = ff.contains(&(i, t));
        let lin = model.layers[i].proj_mut(t);
        let n = if on_input { lin.d_in() } else { lin.d_out() };
        added += n;
        lin.ia3.insert(name, Ia3Vector::ones(n, on_input, &device));
    }
    super::finish_adapter(model, name, super::Method::Ia3(config.clone()));
    Ok(added)
}
