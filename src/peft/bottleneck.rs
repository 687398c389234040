//! Bottleneck adapters: `h + up(act(down(h)))` inserted after a sublayer. Houlsby et al. (2019)
//! place one after the attention block and one after the MLP; Pfeiffer et al. (2021) only after
//! the MLP. The down projection is kaiming-uniform and the up projection zero (the "mam"
//! initialisation of adapter libraries), so a fresh adapter is exactly the identity.

use burn::prelude::*;
use burn::tensor::activation;

use super::PeftError;
use super::slots::Part;
use crate::kernels::precision;
use crate::model::Llama;
use crate::model::init;
use crate::model::params::{Param, ParamVisitor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Houlsby,
    Pfeiffer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Gelu,
    Silu,
    Tanh,
}

impl Activation {
    pub fn parse(s: &str) -> Option<Self> {
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

#[derive(Clone, Debug, PartialEq)]
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
    fn new(
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
    pub fn forward(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        let z = precision::matmul(h.clone(), self.down.value.clone())
            + self.down_bias.value.clone().unsqueeze();
        let z = self.activation.apply(z);
        h + precision::matmul(z, self.up.value.clone()) + self.up_bias.value.clone().unsqueeze()
    }

    pub fn numel(&self) -> usize {
        self.down.numel() + self.down_bias.numel() + self.up.numel() + self.up_bias.numel()
    }
}

pub fn attach<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &BottleneckConfig,
) -> Result<usize, PeftError> {
    let d = model.config.hidden_size;
    if config.reduction_factor == 0 || config.reduction_factor > d {
        return Err(PeftError::Invalid(format!(
            "reduction_factor must be in 1..={d} (got {})",
            config.reduction_factor
        )));
    }
    let m = d / config.reduction_factor;
    super::begin_adapter(model, name)?;
    let device = model.device.clone();
    let mut added = 0;
    for (i, layer) in model.layers.iter_mut().enumerate() {
        if config.placement == Placement::Houlsby {
            let mut rng = init::rng_for(config.seed, &format!("bottleneck.layers.{i}.attn"));
            let a = Bottleneck::new(d, m, config.activation, &mut rng, &device);
            added += a.numel();
            layer.attn_adapter.insert(name, a);
        }
        let mut rng = init::rng_for(config.seed, &format!("bottleneck.layers.{i}.mlp"));
        let a = Bottleneck::new(d, m, config.activation, &mut rng, &device);
        added += a.numel();
        layer.mlp_adapter.insert(name, a);
    }
    super::finish_adapter(model, name, super::Method::Bottleneck(config.clone()));
    Ok(added)
}
