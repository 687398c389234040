//! AdamW with PyTorch's semantics and defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01,
//! decoupled decay applied before the moment update, eps added after the bias-corrected sqrt).

use std::collections::HashMap;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::model::params::{Param, ParamVisitor};

#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Keep the two moments in host memory between steps and bring each parameter's in for
    /// its own update (the host-offloaded optimizer of large GPU runs: 8 bytes per trained
    /// parameter leave device memory, at the cost of two transfers each way per step). The
    /// updates are identical either way.
    pub offload: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, offload: false }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OptimError {
    #[error("{field} must be {what} (got {value})")]
    Range { field: &'static str, what: &'static str, value: f64 },
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<(), OptimError> {
        let check = |field, ok: bool, what, value| if ok { Ok(()) } else { Err(OptimError::Range { field, what, value }) };
        check("lr", self.lr.is_finite() && self.lr > 0.0, "a positive finite number", self.lr)?;
        check("beta1", (0.0..1.0).contains(&self.beta1), "in [0, 1)", self.beta1)?;
        check("beta2", (0.0..1.0).contains(&self.beta2), "in [0, 1)", self.beta2)?;
        check("eps", self.eps.is_finite() && self.eps > 0.0, "a positive finite number", self.eps)?;
        check("weight_decay", self.weight_decay.is_finite() && self.weight_decay >= 0.0, "a non-negative finite number", self.weight_decay)
    }
}

/// First and second moments of one parameter, flattened: on the device, or offloaded.
enum Moments<B: Backend> {
    Device { m: Tensor<B, 1>, v: Tensor<B, 1> },
    Host { m: Vec<f32>, v: Vec<f32> },
}

pub struct AdamW<B: AutodiffBackend> {
    pub config: AdamWConfig,
    /// Updates taken so far (the bias-correction step count).
    pub steps: u64,
    state: HashMap<String, Moments<B::InnerBackend>>,
}

impl<B: AutodiffBackend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Result<Self, OptimError> {
        config.validate()?;
        Ok(Self { config, steps: 0, state: HashMap::new() })
    }

    /// One update, at learning rate `lr`, of every trainable parameter that `visit_model`
    /// walks and that received a gradient.
    pub fn update(&mut self, lr: f64, grads: &B::Gradients, visit_model: impl FnOnce(&mut Updater<'_, B>)) {
        self.steps += 1;
        let mut updater = Updater { opt: self, grads, lr };
        visit_model(&mut updater);
    }

    fn update_param<const D: usize>(&mut self, name: &str, p: &mut Param<B, D>, grads: &B::Gradients, lr: f64) {
        if !p.trainable {
            return;
        }
        let Some(grad) = p.value.grad(grads) else { return };
        let dims = p.value.dims();
        let n: usize = dims.iter().product();
        let c = &self.config;
        let g = grad.reshape([n]);
        let w = p.value.clone().inner().reshape([n]);
        let device = g.device();
        let (m, v) = match self.state.remove(name) {
            None => (Tensor::zeros([n], &device), Tensor::zeros([n], &device)),
            Some(Moments::Device { m, v }) => (m, v),
            Some(Moments::Host { m, v }) => (Tensor::from_data(TensorData::new(m, [n]), &device), Tensor::from_data(TensorData::new(v, [n]), &device)),
        };
        let m = m * c.beta1 + g.clone() * (1.0 - c.beta1);
        let v = v * c.beta2 + g.square() * (1.0 - c.beta2);
        let t = self.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let decayed = w * (1.0 - lr * c.weight_decay);
        let denom = v.clone().sqrt() / bc2.sqrt() + c.eps;
        let w = decayed - m.clone() / denom * (lr / bc1);
        let host = |t: Tensor<B::InnerBackend, 1>| t.into_data().convert::<f32>().to_vec::<f32>().expect("f32 moments");
        let stored = if c.offload { Moments::Host { m: host(m), v: host(v) } } else { Moments::Device { m, v } };
        self.state.insert(name.to_string(), stored);
        p.value = Tensor::from_inner(w.reshape(dims)).require_grad();
    }
}

/// The visitor that applies AdamW to each parameter it is shown.
pub struct Updater<'a, B: AutodiffBackend> {
    opt: &'a mut AdamW<B>,
    grads: &'a B::Gradients,
    lr: f64,
}

impl<B: AutodiffBackend> ParamVisitor<B> for Updater<'_, B> {
    fn visit1(&mut self, name: &str, p: &mut Param<B, 1>) {
        self.opt.update_param(name, p, self.grads, self.lr);
    }
    fn visit2(&mut self, name: &str, p: &mut Param<B, 2>) {
        self.opt.update_param(name, p, self.grads, self.lr);
    }
}
