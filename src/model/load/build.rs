//! Builds a `Llama` from any source of weights addressed by Hugging Face names, in PyTorch's
//! layout (`[out, in]` for projections). Projections are transposed here to `[in, out]`.

use std::path::PathBuf;
use std::sync::Arc;

use burn::prelude::*;

use super::LoadError;
// Re-exported for the adapter file formats, which read PyTorch layouts too.
use crate::kernels::thin::transpose;
use crate::model::config::LlamaConfig;
use crate::model::init;
use crate::model::linear::{Linear, Weight};
use crate::model::llama::{Block, Llama, module_path, projection_shape};
use crate::model::params::Param;
use crate::quant::{QuantConfig, QuantizedTensor};

/// Weights by Hugging Face name (`model.layers.0.self_attn.q_proj.weight`), row-major in
/// PyTorch's shape, as f32.
pub(crate) trait WeightSource {
    fn path(&self) -> PathBuf;
    fn has(&self, name: &str) -> bool;
    /// The tensor's values; `shape` is the PyTorch shape it must have.
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError>;
    /// A projection stored quantized (bitsandbytes 4-bit), if the source holds it so;
    /// `shape` is `[out, in]`.
    fn load_quantized(
        &self,
        _name: &str,
        _shape: [usize; 2],
    ) -> Result<Option<crate::quant::QuantizedTensor>, LoadError> {
        Ok(None)
    }
}

/// Builds the model from `src`, quantizing each projection as soon as it is read when `quant`
/// is given, so the f32 weights of the whole model never exist at once (QLoRA's loading).
/// Projections stored quantized are kept as stored.
pub(crate) fn build_llama_quantized<B: Backend, S: WeightSource>(
    config: LlamaConfig,
    src: &S,
    device: &B::Device,
    quant: Option<QuantConfig>,
) -> Result<Llama<B>, LoadError> {
    let projection_bytes = quant.map_or(4.0, |q| q.bytes_per_weight());
    config
        .validate()
        .and_then(|()| config.check_fits(projection_bytes))
        .map_err(|error| LoadError::Config {
            path: src.path(),
            error,
        })?;
    if let Some(q) = quant {
        for &proj in config.projections() {
            let (d_in, _) = projection_shape(&config, proj);
            q.validate(d_in).map_err(|e| LoadError::File {
                path: src.path(),
                msg: format!("{proj}: {e}"),
            })?;
        }
    }
    let (d, vocab) = (config.hidden_size, config.vocab_size);
    // Gemma stores a norm weight as `w` and applies `1 + w` (in f32, as runner adds it here).
    let offset = config.family.norm_offset();
    let norm_of = |name: &str, len: usize| -> Result<Param<B, 1>, LoadError> {
        let mut w = src.load(name, &[len])?;
        if offset != 0.0 {
            w.iter_mut().for_each(|v| *v += offset);
        }
        Ok(Param::new(init::tensor1::<B>(w, device), true))
    };
    let norm = |name: &str| norm_of(name, d);
    let linear = |name: &str, d_in: usize, d_out: usize| -> Result<Linear<B>, LoadError> {
        if let Some(q) = src.load_quantized(name, [d_out, d_in])? {
            return Ok(Linear::with_weight(Weight::Quantized(Arc::new(q))));
        }
        let stored = src.load(name, &[d_out, d_in])?;
        if let Some(q) = quant {
            let q = QuantizedTensor::quantize(&stored, &[d_out, d_in], q).map_err(|e| {
                LoadError::File {
                    path: src.path(),
                    msg: format!("{name}: {e}"),
                }
            })?;
            return Ok(Linear::with_weight(Weight::Quantized(Arc::new(q))));
        }
        let w = transpose(&stored, d_out, d_in);
        Ok(Linear::new(
            init::tensor2::<B>(w, [d_in, d_out], device),
            true,
        ))
    };
    let vector = |name: &str, len: usize| -> Result<Param<B, 1>, LoadError> {
        Ok(Param::new(
            init::tensor1::<B>(src.load(name, &[len])?, device),
            true,
        ))
    };
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let n = |s: &str| format!("model.layers.{i}.{s}.weight");
        let gemma = config.family.is_gemma();
        let mlp_norm = if gemma {
            "pre_feedforward_layernorm"
        } else {
            "post_attention_layernorm"
        };
        let (input_norm, mlp_norm) = (norm(&n("input_layernorm"))?, norm(&n(mlp_norm))?);
        let mut block = Block::new(input_norm, mlp_norm, config.projections(), |proj| {
            let (d_in, d_out) = projection_shape(&config, proj);
            let mut l = linear(&format!("{}.weight", module_path(i, proj)), d_in, d_out)?;
            if config.has_bias(proj) {
                l.base_bias = Some(vector(&format!("{}.bias", module_path(i, proj)), d_out)?);
            }
            Ok::<_, LoadError>(l)
        })?;
        if config.qk_norm() {
            let hd = config.head_dim();
            block.q_norm = Some(norm_of(&n("self_attn.q_norm"), hd)?);
            block.k_norm = Some(norm_of(&n("self_attn.k_norm"), hd)?);
        }
        if gemma {
            block.attn_out_norm = Some(norm(&n("post_attention_layernorm"))?);
            block.mlp_out_norm = Some(norm(&n("post_feedforward_layernorm"))?);
        }
        layers.push(block);
    }
    let embed = src.load("model.embed_tokens.weight", &[vocab, d])?;
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(Param::new(
            init::tensor2::<B>(src.load("lm_head.weight", &[vocab, d])?, [vocab, d], device),
            true,
        ))
    };
    let embed = Param::new(init::tensor2::<B>(embed, [vocab, d], device), true);
    // A reward model (`LlamaForSequenceClassification` with one label) carries `score`.
    let score = if src.has("score.weight") {
        Some(Param::new(
            init::tensor2::<B>(src.load("score.weight", &[1, d])?, [1, d], device),
            true,
        ))
    } else {
        None
    };
    let mut model = Llama::from_parts(
        config,
        embed,
        layers,
        norm("model.norm.weight")?,
        lm_head,
        device,
    );
    model.score = score;
    Ok(model)
}
