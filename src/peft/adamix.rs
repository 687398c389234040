//! AdaMix (Wang et al., 2022): a mixture of adaptation modules. Each bottleneck adapter holds
//! `experts` down projections and `experts` up projections; in training every forward pass
//! routes through one down and one up expert drawn at random (stochastic routing, no router to
//! learn), and the trainer adds a consistency term between two passes with different routes
//! (`consistency`, the weight λ of a symmetric KL between their next-token distributions; see
//! `train::consistency`). For inference the experts are merged by averaging their weights
//! into one adapter ("adaptation merging"): evaluation and generation use the average. The paper shares the up projection among the experts by default ("adaptation
//! module sharing"), and so does runner (`share = "up"`; "down" or "none" also).

use burn::prelude::*;

use super::PeftError;
use super::bottleneck::{self, Activation, Placement};
use crate::model::Llama;
use crate::model::adapters::bottleneck::{Bottleneck, Projection, dense_pair};
use crate::model::init;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Share {
    Up,
    Down,
    None,
}

/// `runner.peft.adamix{...}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaMixConfig {
    pub placement: Placement,
    pub reduction_factor: usize,
    pub activation: Activation,
    /// Experts per projection (the paper's M).
    pub experts: usize,
    /// Which projection all experts share.
    pub share: Share,
    /// λ of the consistency term (0: one pass per step, no term).
    pub consistency: f64,
    pub seed: u64,
}

impl Default for AdaMixConfig {
    fn default() -> Self {
        Self {
            placement: Placement::Houlsby,
            reduction_factor: 16,
            activation: Activation::Relu,
            experts: 4,
            share: Share::Up,
            consistency: 1.0,
            seed: 0,
        }
    }
}

impl AdaMixConfig {
    pub(crate) fn validate(&self) -> Result<(), PeftError> {
        if self.experts == 0 {
            return Err(PeftError::Invalid(
                "AdaMix needs at least one expert".into(),
            ));
        }
        if !(self.consistency.is_finite() && self.consistency >= 0.0) {
            return Err(PeftError::Invalid(format!(
                "AdaMix consistency must be a finite number >= 0 (got {})",
                self.consistency
            )));
        }
        Ok(())
    }
}

/// Stacks the experts' dense projections into one [`Projection::Experts`].
fn experts<B: Backend>(list: Vec<Projection<B>>) -> Projection<B> {
    let (mut weights, mut biases) = (Vec::new(), Vec::new());
    for p in list {
        let Projection::Dense { weight, bias } = p else {
            unreachable!("experts are dense")
        };
        weights.push(weight);
        biases.push(bias);
    }
    Projection::Experts { weights, biases }
}

pub(crate) fn attach<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &AdaMixConfig,
) -> Result<usize, PeftError> {
    config.validate()?;
    let d = model.config.hidden_size;
    let m = bottleneck::width(d, config.reduction_factor)?;
    super::begin_adapter(model, name)?;
    let device = model.device.clone();
    let added = bottleneck::insert(model, name, config.placement, |label| {
        let mut rng = init::rng_for(config.seed, &format!("adamix.{label}"));
        // Every expert starts as a fresh bottleneck adapter (its up projection zero), so the
        // mixture starts as the identity whichever route is drawn.
        let (downs, ups): (Vec<_>, Vec<_>) = (0..config.experts)
            .map(|_| dense_pair(d, m, &mut rng, &device))
            .unzip();
        let (down, up) = match config.share {
            Share::Up => (experts(downs), ups.into_iter().next().expect("one expert")),
            Share::Down => (downs.into_iter().next().expect("one expert"), experts(ups)),
            Share::None => (experts(downs), experts(ups)),
        };
        Bottleneck {
            down,
            up,
            activation: config.activation,
        }
    });
    super::finish_adapter(model, name, super::Method::AdaMix(config.clone()));
    Ok(added)
}
