//! Quantizing a whole model: every projection of every block (the layers bitsandbytes
//! replaces with 4-bit ones); embeddings, norms and the output head stay in f32.

use burn::prelude::*;

use super::Llama;
use crate::quant::{QuantConfig, QuantError};

/// What quantizing changed: weight counts and bytes before and after.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct QuantSummary {
    pub quantized_params: usize,
    pub dense_bytes: usize,
    pub quantized_bytes: usize,
}

impl QuantSummary {
    pub(crate) fn bytes_per_param(&self) -> f64 {
        self.quantized_bytes as f64 / self.quantized_params.max(1) as f64
    }
}

/// Quantizes the projection weights in place. Checks every layer first, so a bad option
/// changes nothing. Adapters stay as they are (in f32); a merged adapter must be unmerged
/// first, since its update lives in the weights being quantized.
pub fn quantize_model<B: Backend>(
    model: &mut Llama<B>,
    config: QuantConfig,
) -> Result<QuantSummary, QuantError> {
    if let Some(a) = model.adapters.iter().find(|a| a.merged) {
        return Err(QuantError::Invalid(format!(
            "adapter '{}' is merged into the weights; unmerge it before quantizing",
            a.name
        )));
    }
    if let Some(q) = model_quant_config(model) {
        return Err(QuantError::Invalid(format!(
            "the model is already quantized ({}, block {}); dequantize() it first",
            q.dtype, q.block
        )));
    }
    for (i, layer) in model.layers.iter().enumerate() {
        for (t, lin) in &layer.projections {
            config
                .validate(lin.d_in())
                .map_err(|e| QuantError::Invalid(format!("layers.{i}.{t}: {e}")))?;
        }
    }
    for layer in &mut model.layers {
        for (_, lin) in &mut layer.projections {
            lin.quantize(config)?;
        }
    }
    Ok(summary(model))
}

/// Dequantizes every quantized projection back to a frozen f32 weight.
pub fn dequantize_model<B: Backend>(model: &mut Llama<B>) {
    let device = model.device.clone();
    for layer in &mut model.layers {
        for (_, lin) in &mut layer.projections {
            lin.dequantize(&device);
        }
    }
}

/// Counts the quantized projections and their storage.
pub(crate) fn summary<B: Backend>(model: &Llama<B>) -> QuantSummary {
    let mut s = QuantSummary::default();
    for layer in &model.layers {
        for (_, lin) in &layer.projections {
            if let Some(q) = lin.weight.quantized() {
                s.quantized_params += q.numel();
                s.dense_bytes += 4 * q.numel();
                s.quantized_bytes += q.bytes();
            }
        }
    }
    s
}

/// The quantization of the model's projections, if they are quantized (all alike).
pub(crate) fn model_quant_config<B: Backend>(model: &Llama<B>) -> Option<QuantConfig> {
    model
        .layers
        .iter()
        .flat_map(|l| l.projections.iter().map(|(_, lin)| lin))
        .find_map(|lin| lin.weight.quantized().map(|q| q.config()))
}
