//! A bias-free projection with an optional LoRA adapter beside it.

use burn::prelude::*;

use super::init::HostRng;
use super::params::{Param, ParamVisitor};
use crate::peft::lora::LoraAdapter;

#[derive(Clone, Debug)]
pub struct Linear<B: Backend> {
    /// Stored `[d_in, d_out]` so that `x · weight` needs no transpose
    /// (Hugging Face checkpoints hold `[out, in]`; loaders transpose).
    pub weight: Param<B, 2>,
    pub lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> Linear<B> {
    pub fn new(weight: Tensor<B, 2>, trainable: bool) -> Self {
        Self { weight: Param::new(weight, trainable), lora: None }
    }

    pub fn d_in(&self) -> usize {
        self.weight.value.dims()[0]
    }

    pub fn d_out(&self) -> usize {
        self.weight.value.dims()[1]
    }

    /// # Shapes
    /// - x: `[n, d_in]` -> `[n, d_out]`
    ///
    /// `rng` is `Some` in training (LoRA dropout is drawn from it) and `None` in evaluation.
    pub fn forward(&self, x: Tensor<B, 2>, rng: Option<&mut HostRng>) -> Tensor<B, 2> {
        let base = x.clone().matmul(self.weight.value.clone());
        match &self.lora {
            Some(lora) => base + lora.forward(x, rng),
            None => base,
        }
    }

    pub fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit2(&format!("{prefix}.weight"), &mut self.weight);
        if let Some(lora) = &mut self.lora {
            lora.visit(prefix, v);
        }
    }
}
