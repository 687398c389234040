//! Methods that train beside a frozen backbone, reading its layers' outputs, with no
//! backward pass through it: Ladder Side-Tuning (Sung et al., 2022) and AttentionFusion (Cao
//! et al., 2022). The layers are the model's [`LadderSide`] and [`AttentionFusion`].
//!
//! Adapted to a decoder language model (both papers were written for encoders and
//! encoder-decoders):
//! - Ladder Side-Tuning: the side network is the backbone's own architecture (attention with
//!   the backbone's head count and rotary positions, SwiGLU MLP) at width `d/r`, causal like
//!   the backbone, with its own key/value cache in generation. Its output is projected up and
//!   added to the backbone's last hidden state, with the up projection starting at zero, so a
//!   fresh side network leaves the model unchanged. The paper initialises the side layers from
//!   the pruned backbone; runner draws them at random (normal, std 0.02).
//! - AttentionFusion: the paper fuses one classification token's layer representations with
//!   a task query; runner fuses every token's, and opens the fused state into the head
//!   through a zero-initialised gate (see [`AttentionFusion`]).

use burn::prelude::*;

use super::PeftError;
use crate::model::Llama;
use crate::model::adapters::late::{AttentionFusion, LadderSide};
use crate::model::config::LlamaConfig;
use crate::model::init;
use crate::model::params::Param;

/// `runner.peft.ladder{...}`: the paper's reduction factor 8 and gate temperature 0.1.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LadderConfig {
    pub reduction_factor: usize,
    pub temperature: f64,
    pub seed: u64,
}

impl Default for LadderConfig {
    fn default() -> Self {
        Self {
            reduction_factor: 8,
            temperature: 0.1,
            seed: 0,
        }
    }
}

/// The side network's shape: the backbone's at width `d/r` (MLP `ffn/r`), with the
/// backbone's heads, each `head_dim/r` wide.
fn side_config(c: &LlamaConfig, r: usize) -> Result<LlamaConfig, PeftError> {
    let d = c.hidden_size;
    let hd = c.head_dim();
    if r == 0
        || !d.is_multiple_of(r)
        || !hd.is_multiple_of(r)
        || !(hd / r).is_multiple_of(2)
        || !c.intermediate_size.is_multiple_of(r)
    {
        return Err(PeftError::Invalid(format!(
            "reduction_factor {r} must divide the hidden size {d}, the MLP width {} and the head width {hd}, leaving an even head width",
            c.intermediate_size
        )));
    }
    let mut side = LlamaConfig::plain(
        1,
        d / r,
        c.intermediate_size / r,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
    );
    side.head_dim = Some(hd / r);
    side.rope_theta = c.rope_theta;
    side.rms_norm_eps = c.rms_norm_eps;
    side.max_position_embeddings = c.max_position_embeddings;
    side.sliding_window = c.sliding_window;
    side.layer_types = c.layer_types.clone();
    Ok(side)
}

pub(crate) fn attach_ladder<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &LadderConfig,
) -> Result<usize, PeftError> {
    if !(config.temperature.is_finite() && config.temperature > 0.0) {
        return Err(PeftError::Invalid(format!(
            "temperature must be a positive finite number (got {})",
            config.temperature
        )));
    }
    let c = side_config(&model.config, config.reduction_factor)?;
    let device = model.device.clone();
    let side = Llama::<B>::random(c.clone(), config.seed, 0.02, &device)
        .map_err(|e| PeftError::Invalid(format!("side network: {e}")))?;
    let (d, ds, layers) = (model.config.hidden_size, c.hidden_size, c.num_hidden_layers);
    let downs = (0..=layers)
        .map(|i| {
            let mut rng = init::rng_for(config.seed, &format!("ladder.down.{i}"));
            // nn.Linear's default: uniform(±1/√fan_in).
            let w = init::uniform_vec(&mut rng, d * ds, 1.0 / (d as f64).sqrt());
            Param::new(init::tensor2(w, [d, ds], &device), true)
        })
        .collect();
    let ladder = LadderSide {
        side: Box::new(side),
        downs,
        gates: Param::new(Tensor::zeros([layers], &device), true),
        up: Param::new(Tensor::zeros([ds, d], &device), true),
        temperature: config.temperature,
    };
    let added = ladder.numel();
    super::begin_adapter(model, name)?;
    model.ladder.insert(name, ladder);
    super::finish_adapter(model, name, super::Method::Ladder(config.clone()));
    Ok(added)
}

pub(crate) fn attach_fusion<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
) -> Result<usize, PeftError> {
    let (d, layers) = (model.config.hidden_size, model.config.num_hidden_layers);
    let device = model.device.clone();
    let fusion = AttentionFusion {
        query: Param::new(Tensor::zeros([d], &device), true),
        bias: Param::new(Tensor::zeros([layers + 1], &device), true),
        gate: Param::new(Tensor::zeros([d], &device), true),
    };
    let added = fusion.numel();
    super::begin_adapter(model, name)?;
    model.fusion.insert(name, fusion);
    super::finish_adapter(model, name, super::Method::AttentionFusion);
    Ok(added)
}
