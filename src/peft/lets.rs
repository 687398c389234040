//! LeTS, learn to share (Fu et al., 2021), for a decoder: fine-tune a learned subset of the
//! layers and share the rest with the pretrained model (and so with every other task tuned
//! from it). Each layer gets a task-specific update `ΔW` on every projection, added to the
//! shared weight (weight sharing: a task stores only its layers' updates), and, while the
//! layers are being selected, a gate `σ(β_l)` scaling its updates. The trainer adds
//! `penalty·Σ_l σ(β_l)·(L − l)/L` to the loss: a layer costs in proportion to the layers
//! above it, whose computation can no longer be shared across tasks once it differs
//! (computation sharing favours tuning the top layers). `select` then keeps the `budget`
//! layers with the largest gates, drops the others' updates, and removes the gates.
//!
//! Simplifications, stated: the paper searches with a differentiable relaxation over a
//! multi-task model and a hardware cost model; runner searches on the one task at hand, with
//! the layer-position cost above standing for the hardware cost, and selects once, by gate
//! value, rather than annealing.

use burn::prelude::*;
use burn::tensor::activation::sigmoid;

use super::PeftError;
use crate::model::Llama;
use crate::model::params::Param;

/// `runner.peft.lets{...}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LetsConfig {
    /// How many layers `select` keeps.
    pub budget: usize,
    /// The weight of the gate penalty while selecting.
    pub penalty: f64,
    /// The layers kept after `select`; `None` while selecting.
    pub selected: Option<Vec<usize>>,
}

impl Default for LetsConfig {
    fn default() -> Self {
        Self {
            budget: 4,
            penalty: 0.01,
            selected: None,
        }
    }
}

pub(crate) fn attach<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &LetsConfig,
) -> Result<usize, PeftError> {
    let layers = model.config.num_hidden_layers;
    if config.budget == 0 || config.budget > layers {
        return Err(PeftError::Invalid(format!(
            "budget must be in 1..={layers} layers (got {})",
            config.budget
        )));
    }
    if !(config.penalty.is_finite() && config.penalty >= 0.0) {
        return Err(PeftError::Invalid(format!(
            "penalty must be a finite number >= 0 (got {})",
            config.penalty
        )));
    }
    if let Some(bad) = config.selected.iter().flatten().find(|&&l| l >= layers) {
        return Err(PeftError::Invalid(format!(
            "selected layer {bad} does not exist"
        )));
    }
    super::begin_adapter(model, name)?;
    let device = model.device.clone();
    let mut added = 0;
    for (i, layer) in model.layers.iter_mut().enumerate() {
        let tuned = config.selected.as_ref().is_none_or(|s| s.contains(&i));
        if !tuned {
            continue;
        }
        for (_, lin) in &mut layer.projections {
            let dw = Param::new(Tensor::zeros([lin.d_in(), lin.d_out()], &device), true);
            added += dw.numel();
            lin.delta.insert(name, dw);
        }
        if config.selected.is_none() {
            layer
                .lets_gate
                .insert(name, Param::new(Tensor::zeros([1], &device), true));
            added += 1;
        }
    }
    super::finish_adapter(model, name, super::Method::Lets(config.clone()));
    Ok(added)
}

/// The gate penalty of the active LeTS adapter while it selects: `penalty·Σ σ(β_l)(L − l)/L`.
pub fn penalty<B: Backend>(model: &Llama<B>) -> Option<Tensor<B, 1>> {
    let c = searching(model)?;
    let l = model.layers.len() as f64;
    model
        .layers
        .iter()
        .enumerate()
        .filter_map(|(i, layer)| {
            let g = layer.lets_gate.active()?;
            Some(sigmoid(g.value.clone()) * ((l - i as f64) / l))
        })
        .reduce(|a, b| a + b)
        .map(|sum| sum * c.penalty)
}

/// The active LeTS adapter's config while it is still selecting layers with a penalty.
pub fn searching<B: Backend>(model: &Llama<B>) -> Option<&LetsConfig> {
    match super::active_method(model) {
        Some(super::Method::Lets(c)) if c.selected.is_none() && c.penalty != 0.0 => Some(c),
        _ => None,
    }
}

/// Each layer's gate `σ(β_l)` of the active LeTS adapter (empty once selected).
pub fn gates<B: Backend>(model: &Llama<B>) -> Vec<f64> {
    model
        .layers
        .iter()
        .filter_map(|layer| {
            let g = layer.lets_gate.active()?;
            Some(sigmoid(g.value.clone()).into_scalar().elem::<f64>())
        })
        .collect()
}

/// Keeps the `budget` layers of the active LeTS adapter with the largest gates (ties: the
/// higher layer) and returns them in order; the other layers' updates are dropped and the
/// kept ones apply in full from now on.
pub fn select<B: Backend>(model: &mut Llama<B>) -> Result<Vec<usize>, PeftError> {
    let name = model
        .active_adapter
        .clone()
        .ok_or(PeftError::NoActiveAdapter)?;
    let idx = super::find(model, &name)?;
    let super::Method::Lets(config) = super::Method::of(&model.adapters[idx]).clone() else {
        return Err(PeftError::Invalid(format!(
            "adapter '{name}' is not a LeTS adapter"
        )));
    };
    if let Some(s) = &config.selected {
        return Err(PeftError::Invalid(format!(
            "adapter '{name}' already selected layers {s:?}"
        )));
    }
    let gates = gates(model);
    let mut order: Vec<usize> = (0..gates.len()).collect();
    order.sort_by(|&a, &b| gates[b].total_cmp(&gates[a]).then(b.cmp(&a)));
    let mut selected: Vec<usize> = order.into_iter().take(config.budget).collect();
    selected.sort_unstable();
    for (i, layer) in model.layers.iter_mut().enumerate() {
        layer.lets_gate.remove(&name);
        for (_, lin) in &mut layer.projections {
            if !selected.contains(&i) {
                lin.delta.remove(&name);
            } else if let Some(dw) = lin.delta.get_mut(&name) {
                // Scaled by its gate until now: a kept update takes its gate in, so the
                // outputs do not jump at the switch.
                *dw = Param::new(dw.value.clone() * gates[i], true);
            }
        }
    }
    model.adapters[idx].method = std::sync::Arc::new(super::Method::Lets(LetsConfig {
        selected: Some(selected.clone()),
        ..config
    }));
    super::set_active(model, Some(&name))?;
    Ok(selected)
}
