//! A bias-free projection, with the places adapters can occupy: LoRA/DoRA beside it, (IA)3
//! scaling of its input or output, and BitFit's added bias.

use burn::prelude::*;

use super::init::HostRng;
use super::params::{Param, ParamVisitor};
use crate::peft::ia3::Ia3Vector;
use crate::peft::lora::LoraAdapter;
use crate::peft::slots::Slots;

#[derive(Clone, Debug)]
pub struct Linear<B: Backend> {
    /// Stored `[d_in, d_out]` so that `x · weight` needs no transpose
    /// (Hugging Face checkpoints hold `[out, in]`; loaders transpose).
    pub weight: Param<B, 2>,
    pub lora: Slots<LoraAdapter<B>>,
    pub ia3: Slots<Ia3Vector<B>>,
    /// BitFit biases, `[d_out]`.
    pub bias: Slots<Param<B, 1>>,
}

impl<B: Backend> Linear<B> {
    pub fn new(weight: Tensor<B, 2>, trainable: bool) -> Self {
        Self { weight: Param::new(weight, trainable), lora: Slots::default(), ia3: Slots::default(), bias: Slots::default() }
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
        let ia3 = self.ia3.active().filter(|v| !v.merged);
        let x = match ia3 {
            Some(v) if v.on_input => x * v.vector.value.clone().unsqueeze(),
            _ => x,
        };
        let base = x.clone().matmul(self.weight.value.clone());
        let mut out = match self.lora.active().filter(|l| l.merged.is_none()) {
            Some(lora) => lora.apply(x, base, &self.weight.value, rng),
            None => base,
        };
        if let Some(b) = self.bias.active() {
            out = out + b.value.clone().unsqueeze();
        }
        match ia3 {
            Some(v) if !v.on_input => out * v.vector.value.clone().unsqueeze(),
            _ => out,
        }
    }

    pub fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit2(&format!("{prefix}.weight"), &mut self.weight);
        self.lora.visit(prefix, "lora", v);
        self.ia3.visit(prefix, "ia3_l", v);
        self.bias.visit(prefix, "bias", v);
    }

    pub(crate) fn activate(&mut self, name: Option<&str>) {
        self.lora.activate(name);
        self.ia3.activate(name);
        self.bias.activate(name);
    }

    pub(crate) fn remove_adapter(&mut self, name: &str) {
        self.lora.remove(name);
        self.ia3.remove(name);
        self.bias.remove(name);
    }
}
