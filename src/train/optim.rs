//! AdamW with PyTorch's semantics and defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01,
//! decoupled decay applied before the moment update, eps added after the bias-corrected sqrt).

use std::collections::HashMap;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::kernels;
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
    /// Parameters whose name contains one of these are not decayed (Hugging Face's grouping:
    /// norm weights and biases).
    pub no_decay: Vec<String>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            offload: false,
            no_decay: default_no_decay(),
        }
    }
}

/// Norm weights (`input_layernorm`, `post_attention_layernorm`, `norm`) and biases.
pub(crate) fn default_no_decay() -> Vec<String> {
    vec!["norm".into(), "bias".into()]
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OptimError {
    #[error("{field} must be {what} (got {value})")]
    Range {
        field: &'static str,
        what: &'static str,
        value: f64,
    },
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<(), OptimError> {
        let check = |field, ok: bool, what, value| {
            if ok {
                Ok(())
            } else {
                Err(OptimError::Range { field, what, value })
            }
        };
        check(
            "lr",
            self.lr.is_finite() && self.lr > 0.0,
            "a positive finite number",
            self.lr,
        )?;
        check(
            "beta1",
            (0.0..1.0).contains(&self.beta1),
            "in [0, 1)",
            self.beta1,
        )?;
        check(
            "beta2",
            (0.0..1.0).contains(&self.beta2),
            "in [0, 1)",
            self.beta2,
        )?;
        check(
            "eps",
            self.eps.is_finite() && self.eps > 0.0,
            "a positive finite number",
            self.eps,
        )?;
        check(
            "weight_decay",
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "a non-negative finite number",
            self.weight_decay,
        )
    }
}

/// First and second moments of one parameter, flattened: on the device, or offloaded.
enum Moments<B: Backend> {
    Device { m: Tensor<B, 1>, v: Tensor<B, 1> },
    Host { m: Vec<f32>, v: Vec<f32> },
}

/// Gradients of the trainable parameters, by parameter name, flattened, on the inner
/// backend: what gradient accumulation sums and clipping scales.
pub struct GradMap<B: AutodiffBackend> {
    pub grads: HashMap<String, Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> Default for GradMap<B> {
    fn default() -> Self {
        Self {
            grads: HashMap::new(),
        }
    }
}

impl<B: AutodiffBackend> GradMap<B> {
    /// Adds the gradients that `grads` holds for the trainable parameters `visit_model` walks.
    pub(crate) fn accumulate(
        &mut self,
        grads: &B::Gradients,
        visit_model: impl FnOnce(&mut GradCollector<'_, B>),
    ) {
        visit_model(&mut GradCollector { map: self, grads });
    }

    /// The L2 norm of all gradients together (PyTorch's `clip_grad_norm_` total norm), in f64.
    pub(crate) fn global_norm(&self) -> f64 {
        let mut names: Vec<&String> = self.grads.keys().collect();
        names.sort();
        let sum: f64 = names
            .iter()
            .map(|n| kernels::sum_squares(&self.grads[*n]))
            .sum();
        sum.sqrt()
    }

    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }
}

/// The visitor behind [`GradMap::accumulate`].
pub(crate) struct GradCollector<'a, B: AutodiffBackend> {
    map: &'a mut GradMap<B>,
    grads: &'a B::Gradients,
}

impl<B: AutodiffBackend> GradCollector<'_, B> {
    fn take<const D: usize>(&mut self, name: &str, p: &Param<B, D>) {
        if !p.trainable {
            return;
        }
        let Some(g) = p.value.grad(self.grads) else {
            return;
        };
        let n: usize = g.dims().iter().product();
        let g = g.reshape([n]);
        let sum = match self.map.grads.remove(name) {
            Some(prev) => prev + g,
            None => g,
        };
        self.map.grads.insert(name.to_string(), sum);
    }
}

impl<B: AutodiffBackend> ParamVisitor<B> for GradCollector<'_, B> {
    fn visit1(&mut self, name: &str, p: &mut Param<B, 1>) {
        self.take(name, p);
    }
    fn visit2(&mut self, name: &str, p: &mut Param<B, 2>) {
        self.take(name, p);
    }
}

/// One parameter's moments on the host, for checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct HostMoments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

pub struct AdamW<B: AutodiffBackend> {
    pub config: AdamWConfig,
    /// Updates taken so far (the bias-correction step count).
    pub steps: u64,
    state: HashMap<String, Moments<B::InnerBackend>>,
}

enum GradSource<'a, B: AutodiffBackend> {
    Autodiff(&'a B::Gradients),
    /// Collected (and possibly accumulated) gradients, multiplied by `scale` (clipping).
    Map {
        map: &'a GradMap<B>,
        scale: f64,
    },
}

impl<B: AutodiffBackend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Result<Self, OptimError> {
        config.validate()?;
        Ok(Self {
            config,
            steps: 0,
            state: HashMap::new(),
        })
    }

    /// One update, at learning rate `lr`, of every trainable parameter that `visit_model`
    /// walks and that received a gradient.
    pub fn update(
        &mut self,
        lr: f64,
        grads: &B::Gradients,
        visit_model: impl FnOnce(&mut Updater<'_, B>),
    ) {
        self.steps += 1;
        let mut updater = Updater {
            opt: self,
            grads: GradSource::Autodiff(grads),
            lr,
        };
        visit_model(&mut updater);
    }

    /// One update from collected gradients, each multiplied by `grad_scale` first.
    pub(crate) fn update_from(
        &mut self,
        lr: f64,
        grads: &GradMap<B>,
        grad_scale: f64,
        visit_model: impl FnOnce(&mut Updater<'_, B>),
    ) {
        self.steps += 1;
        let mut updater = Updater {
            opt: self,
            grads: GradSource::Map {
                map: grads,
                scale: grad_scale,
            },
            lr,
        };
        visit_model(&mut updater);
    }

    /// Whether `name` is exempt from weight decay (a norm weight or a bias, by default).
    fn decays(&self, name: &str) -> bool {
        !self
            .config
            .no_decay
            .iter()
            .any(|pat| name.contains(pat.as_str()))
    }

    /// The moments of every parameter updated so far, on the host (for checkpoints).
    pub fn export_state(&self) -> Vec<(String, HostMoments)> {
        let host = |t: &Tensor<B::InnerBackend, 1>| {
            t.to_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 moments")
        };
        let mut out: Vec<(String, HostMoments)> = self
            .state
            .iter()
            .map(|(name, s)| {
                let moments = match s {
                    Moments::Device { m, v } => HostMoments {
                        m: host(m),
                        v: host(v),
                    },
                    Moments::Host { m, v } => HostMoments {
                        m: m.clone(),
                        v: v.clone(),
                    },
                };
                (name.clone(), moments)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Replaces the moments and the step count (resuming from a checkpoint).
    pub(crate) fn import_state(
        &mut self,
        steps: u64,
        state: Vec<(String, HostMoments)>,
        device: &burn::tensor::Device<B::InnerBackend>,
    ) {
        self.steps = steps;
        self.state = state
            .into_iter()
            .map(|(name, HostMoments { m, v })| {
                let stored = if self.config.offload {
                    Moments::Host { m, v }
                } else {
                    let n = m.len();
                    Moments::Device {
                        m: Tensor::from_data(TensorData::new(m, [n]), device),
                        v: Tensor::from_data(TensorData::new(v, [n]), device),
                    }
                };
                (name, stored)
            })
            .collect();
    }

    fn update_param<const D: usize>(
        &mut self,
        name: &str,
        p: &mut Param<B, D>,
        grads: &GradSource<'_, B>,
        lr: f64,
    ) {
        if !p.trainable {
            return;
        }
        let (g, grad_scale) = match grads {
            GradSource::Autodiff(grads) => match p.value.grad(grads) {
                Some(g) => {
                    let n: usize = g.dims().iter().product();
                    (g.reshape([n]), 1.0)
                }
                None => return,
            },
            GradSource::Map { map, scale } => match map.grads.get(name) {
                Some(g) => (g.clone(), *scale),
                None => return,
            },
        };
        let dims = p.value.dims();
        let n: usize = dims.iter().product();
        let c = &self.config;
        // Taken out of the parameter (a one-element stand-in until the update is back), so the
        // optimizer holds the only reference and can update the weights in place.
        let stand_in = Tensor::zeros([1; D], &p.value.device());
        let w = std::mem::replace(&mut p.value, stand_in)
            .inner()
            .reshape([n]);
        let device = g.device();
        let (m, v) = match self.state.remove(name) {
            None => (Tensor::zeros([n], &device), Tensor::zeros([n], &device)),
            Some(Moments::Device { m, v }) => (m, v),
            Some(Moments::Host { m, v }) => (
                Tensor::from_data(TensorData::new(m, [n]), &device),
                Tensor::from_data(TensorData::new(v, [n]), &device),
            ),
        };
        let t = self.steps as i32;
        let weight_decay = if self.decays(name) {
            c.weight_decay
        } else {
            0.0
        };
        let step = kernels::AdamWStep::new(lr, c.beta1, c.beta2, c.eps, weight_decay, t)
            .with_grad_scale(grad_scale);
        let [w, m, v] = kernels::adamw(w, g, m, v, step);
        let host = |t: Tensor<B::InnerBackend, 1>| {
            t.into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 moments")
        };
        let stored = if c.offload {
            Moments::Host {
                m: host(m),
                v: host(v),
            }
        } else {
            Moments::Device { m, v }
        };
        self.state.insert(name.to_string(), stored);
        p.value = Tensor::from_inner(w.reshape(dims)).require_grad();
    }
}

/// The visitor that applies AdamW to each parameter it is shown.
pub struct Updater<'a, B: AutodiffBackend> {
    opt: &'a mut AdamW<B>,
    grads: GradSource<'a, B>,
    lr: f64,
}

impl<B: AutodiffBackend> ParamVisitor<B> for Updater<'_, B> {
    fn visit1(&mut self, name: &str, p: &mut Param<B, 1>) {
        self.opt.update_param(name, p, &self.grads, self.lr);
    }
    fn visit2(&mut self, name: &str, p: &mut Param<B, 2>) {
        self.opt.update_param(name, p, &self.grads, self.lr);
    }
}
