//! Maps a llama-architecture GGUF file onto `Llama`: config from metadata, tensors by
//! llama.cpp's names, q/k rows restored from llama.cpp's interleaved rotary layout to Hugging
//! Face's rotate-half layout, projections transposed to `[d_in, d_out]`.

use std::path::PathBuf;

use burn::prelude::*;

use super::gguf::{GgufError, GgufFile};
use crate::model::config::{ConfigError, LlamaConfig};
use crate::model::init;
use crate::model::linear::Linear;
use crate::model::llama::{Block, Llama};
use crate::model::params::Param;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: architecture '{arch}' is not supported (expected llama)")]
    Arch { path: PathBuf, arch: String },
    #[error("{path}: missing metadata '{key}'")]
    MissingMeta { path: PathBuf, key: String },
    #[error("{path}: missing tensor '{tensor}'")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor '{tensor}' has shape {found:?}, expected {expected:?}")]
    Shape { path: PathBuf, tensor: String, expected: Vec<u64>, found: Vec<u64> },
    #[error("{path}: invalid model config: {source}")]
    Config { path: PathBuf, source: ConfigError },
}

/// The Llama config stored in a GGUF file's `llama.*` metadata.
pub fn config_from_gguf(f: &GgufFile) -> Result<LlamaConfig, LoadError> {
    let arch = f.meta("general.architecture").and_then(|v| v.as_str()).unwrap_or("");
    if arch != "llama" {
        return Err(LoadError::Arch { path: f.path.clone(), arch: arch.to_string() });
    }
    let missing = |key: &str| LoadError::MissingMeta { path: f.path.clone(), key: key.to_string() };
    let int = |key: &str| f.meta(key).and_then(|v| v.as_u64()).map(|v| v as usize).ok_or_else(|| missing(key));
    let heads = int("llama.attention.head_count")?;
    let hidden = int("llama.embedding_length")?;
    let vocab = match int("llama.vocab_size") {
        Ok(v) => v,
        Err(_) => match f.meta("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(tokens) => tokens.len(),
            None => f.tensor("token_embd.weight").map(|t| t.dims[1] as usize).ok_or_else(|| missing("llama.vocab_size"))?,
        },
    };
    let config = LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: int("llama.feed_forward_length")?,
        num_hidden_layers: int("llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: int("llama.attention.head_count_kv").unwrap_or(heads),
        head_dim: int("llama.attention.key_length").ok(),
        rms_norm_eps: f.meta("llama.attention.layer_norm_rms_epsilon").and_then(|v| v.as_f64()).unwrap_or(1e-5),
        rope_theta: f.meta("llama.rope.freq_base").and_then(|v| v.as_f64()).unwrap_or(10000.0),
        max_position_embeddings: int("llama.context_length").unwrap_or(2048),
        tie_word_embeddings: f.tensor("output.weight").is_none(),
    };
    config.validate().map_err(|source| LoadError::Config { path: f.path.clone(), source })?;
    Ok(config)
}

/// Builds the model on `device`, dequantizing one tensor at a time into f32.
pub fn load_llama_gguf<B: Backend>(f: &GgufFile, device: &B::Device) -> Result<Llama<B>, LoadError> {
    let config = config_from_gguf(f)?;
    let (d, hd) = (config.hidden_size as u64, config.head_dim() as u64);
    let (h, kvh, ffn, vocab) = (
        config.num_attention_heads as u64,
        config.num_key_value_heads as u64,
        config.intermediate_size as u64,
        config.vocab_size as u64,
    );
    let values = |name: &str, dims: &[u64]| -> Result<Vec<f32>, LoadError> {
        let t = f.tensor(name).ok_or_else(|| LoadError::MissingTensor { path: f.path.clone(), tensor: name.to_string() })?;
        if t.dims != dims {
            return Err(LoadError::Shape { path: f.path.clone(), tensor: name.to_string(), expected: dims.to_vec(), found: t.dims.clone() });
        }
        Ok(f.dequantize(t))
    };
    let norm = |name: &str| -> Result<Param<B, 1>, LoadError> { Ok(Param::new(init::tensor1::<B>(values(name, &[d])?, device), true)) };
    // GGUF dims [d_in, d_out] hold a row-major [d_out][d_in] matrix (PyTorch's layout).
    let linear = |name: &str, d_in: u64, d_out: u64, rope_heads: Option<u64>| -> Result<Linear<B>, LoadError> {
        let mut w = values(name, &[d_in, d_out])?;
        if let Some(n_heads) = rope_heads {
            w = unpermute_rope_rows(&w, n_heads as usize, d_in as usize);
        }
        let w = transpose(&w, d_out as usize, d_in as usize);
        Ok(Linear::new(init::tensor2::<B>(w, [d_in as usize, d_out as usize], device), true))
    };
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        layers.push(Block {
            input_layernorm: norm(&n("attn_norm"))?,
            q_proj: linear(&n("attn_q"), d, h * hd, Some(h))?,
            k_proj: linear(&n("attn_k"), d, kvh * hd, Some(kvh))?,
            v_proj: linear(&n("attn_v"), d, kvh * hd, None)?,
            o_proj: linear(&n("attn_output"), h * hd, d, None)?,
            post_attention_layernorm: norm(&n("ffn_norm"))?,
            gate_proj: linear(&n("ffn_gate"), d, ffn, None)?,
            up_proj: linear(&n("ffn_up"), d, ffn, None)?,
            down_proj: linear(&n("ffn_down"), ffn, d, None)?,
        });
    }
    let embed = values("token_embd.weight", &[d, vocab])?;
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(Param::new(init::tensor2::<B>(values("output.weight", &[d, vocab])?, [vocab as usize, d as usize], device), true))
    };
    Ok(Llama {
        embed_tokens: Param::new(init::tensor2::<B>(embed, [vocab as usize, d as usize], device), true),
        layers,
        norm: norm("output_norm.weight")?,
        lm_head,
        device: device.clone(),
        config,
    })
}

/// llama.cpp's converter interleaves each head's rows for its rotary kernel
/// (`w.reshape(heads, 2, hd/2, in).swapaxes(1, 2)`); this undoes it, giving the rotate-half
/// layout of Hugging Face checkpoints.
pub fn unpermute_rope_rows(w: &[f32], n_heads: usize, d_in: usize) -> Vec<f32> {
    let rows = w.len() / d_in;
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * hd + 2 * i + j;
                let dst = h * hd + j * half + i;
                out[dst * d_in..(dst + 1) * d_in].copy_from_slice(&w[src * d_in..(src + 1) * d_in]);
            }
        }
    }
    out
}

/// Row-major `[rows][cols]` -> `[cols][rows]`.
pub fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = w[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // One head of dim 4, d_in 1: HF rows [a0 a1 b0 b1] (halves a, b) are stored by llama.cpp
        // as [a0 b0 a1 b1].
        let gguf = [10.0, 20.0, 11.0, 21.0];
        assert_eq!(unpermute_rope_rows(&gguf, 1, 1), vec![10.0, 11.0, 20.0, 21.0]);
        assert_eq!(transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
