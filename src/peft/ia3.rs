//! (IA)3 (Liu et al. 2022): learned vectors that rescale activations. As in Hugging Face PEFT
//! for Llama, the outputs of k_proj and v_proj and the input of down_proj (the MLP's
//! intermediate activation) are rescaled; vectors start at one, so a fresh adapter is a no-op.

use burn::prelude::*;

use super::PeftError;
use super::slots::Part;
use super::targets::Targets;
use crate::model::Llama;
use crate::model::params::{Param, ParamVisitor};

#[derive(Clone, Debug, PartialEq)]
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

#[derive(Clone, Debug)]
pub struct Ia3Vector<B: Backend> {
    /// `[d_in]` when `on_input`, else `[d_out]`.
    pub vector: Param<B, 1>,
    pub on_input: bool,
    pub merged: bool,
}

impl<B: Backend> Part<B> for Ia3Vector<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit1(prefix, &mut self.vector);
    }
}

impl<B: Backend> Ia3Vector<B> {
    /// The vector shaped to broadcast over a `[d_in, d_out]` weight: a column or a row.
    fn weight_factor(&self) -> Tensor<B, 2> {
        let v = self.vector.value.clone();
        if self.on_input {
            v.unsqueeze_dim::<2>(1)
        } else {
            v.unsqueeze::<2>()
        }
    }

    pub fn merge(&mut self, weight: Tensor<B, 2>) -> Tensor<B, 2> {
        self.merged = true;
        weight * self.weight_factor()
    }

    pub fn unmerge(&mut self, weight: Tensor<B, 2>) -> Tensor<B, 2> {
        if !std::mem::take(&mut self.merged) {
            return weight;
        }
        weight / self.weight_factor()
    }
}

pub fn attach<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &Ia3Config,
) -> Result<usize, PeftError> {
    let layers = model.config.num_hidden_layers;
    let modules = config.targets.resolve(layers)?;
    let ff = config.feedforward.resolve(layers)?;
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
        let lin = model.layers[i].linear_mut(t).expect("resolved target");
        let n = if on_input { lin.d_in() } else { lin.d_out() };
        added += n;
        lin.ia3.insert(
            name,
            Ia3Vector {
                vector: Param::new(Tensor::ones([n], &device), true),
                on_input,
                merged: false,
            },
        );
    }
    super::finish_adapter(model, name, super::Method::Ia3(config.clone()));
    Ok(added)
}
