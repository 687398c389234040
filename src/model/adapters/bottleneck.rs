//! The bottleneck adapter: `h + up(act(down(h)))`, inserted after a sublayer. The down
//! projection is kaiming-uniform and the up projection zero (the "mam" initialisation of
//! adapter libraries), so a fresh adapter is exactly the identity.

use burn::prelude::*;
use burn::tensor::activation;

use super::slots::Part;
use crate::kernels::precision;
use crate::model::init;
use crate::model::params::{Param, ParamVisitor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Gelu,
    #[serde(alias = "swish")]
    Silu,
    Tanh,
}

impl Activation {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "relu" => Self::Relu,
            "gelu" => Self::Gelu,
            "silu" | "swish" => Self::Silu,
            "tanh" => Self::Tanh,
            _ => return None,
        })
    }

    fn apply<B: Backend>(self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Self::Relu => activation::relu(x),
            Self::Gelu => activation::gelu(x),
            Self::Silu => activation::silu(x),
            Self::Tanh => activation::tanh(x),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Bottleneck<B: Backend> {
    /// `[d, m]`, `[m]`, `[m, d]`, `[d]`
    pub down: Param<B, 2>,
    pub down_bias: Param<B, 1>,
    pub up: Param<B, 2>,
    pub up_bias: Param<B, 1>,
    pub activation: Activation,
}

impl<B: Backend> Part<B> for Bottleneck<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit2(&format!("{prefix}.down.weight"), &mut self.down);
        v.visit1(&format!("{prefix}.down.bias"), &mut self.down_bias);
        v.visit2(&format!("{prefix}.up.weight"), &mut self.up);
        v.visit1(&format!("{prefix}.up.bias"), &mut self.up_bias);
    }
}

impl<B: Backend> Bottleneck<B> {
    /// A fresh adapter of width `d` with an `m`-wide bottleneck, drawn from `rng`.
    pub(crate) fn new(
        d: usize,
        m: usize,
        activation: Activation,
        rng: &mut init::HostRng,
        device: &B::Device,
    ) -> Self {
        let bound = 1.0 / (d as f64).sqrt();
        let down = init::tensor2::<B>(init::uniform_vec(rng, d * m, bound), [d, m], device);
        let down_bias = init::tensor1::<B>(init::uniform_vec(rng, m, bound), device);
        Self {
            down: Param::new(down, true),
            down_bias: Param::new(down_bias, true),
            up: Param::new(Tensor::zeros([m, d], device), true),
            up_bias: Param::new(Tensor::zeros([d], device), true),
            activation,
        }
    }

    /// # Shapes
    /// - h: `[n, d]` -> `[n, d]`
    pub(crate) fn forward(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        let z = precision::matmul(h.clone(), self.down.value.clone())
            + self.down_bias.value.clone().unsqueeze();
        let z = self.activation.apply(z);
        h + precision::matmul(z, self.up.value.clone()) + self.up_bias.value.clone().unsqueeze()
    }

    pub(crate) fn numel(&self) -> usize {
        self.down.numel() + self.down_bias.numel() + self.up.numel() + self.up_bias.numel()
    }
}
