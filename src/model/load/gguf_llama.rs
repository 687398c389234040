//! Maps a GGUF file of a supported architecture (llama, qwen2, qwen3, gemma2, gemma3, phi3) onto
//! `Llama`: config from the `<arch>.*` metadata, tensors by llama.cpp's names, llama's q/k
//! rows restored from llama.cpp's interleaved rotary layout to Hugging Face's rotate-half
//! layout (the other families are stored unpermuted), Gemma's norms from llama.cpp's `1 + w`
//! back to Hugging Face's `w`, projections transposed to `[d_in, d_out]`.

use std::path::PathBuf;

use burn::prelude::*;

use super::build::{WeightSource, build_llama_quantized};
use super::gguf::{GgufError, GgufFile};
use crate::model::config::{ConfigError, Family, LayerType, LlamaConfig};
use crate::model::llama::Llama;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(
        "{path}: architecture '{arch}' is not supported (supported: llama, qwen2, qwen3, gemma2, gemma3, phi3)"
    )]
    Arch { path: PathBuf, arch: String },
    #[error("{path}: missing metadata '{key}'")]
    MissingMeta { path: PathBuf, key: String },
    #[error("{path}: missing tensor '{tensor}'")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor '{tensor}' has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        tensor: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    // Not `source`: the message already holds the config error, and a source would print it
    // twice in an error chain.
    #[error("{path}: invalid model config: {error}")]
    Config { path: PathBuf, error: ConfigError },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
}

/// The family of a GGUF file's `general.architecture`.
fn family_of(arch: &str) -> Option<Family> {
    Some(match arch {
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        "qwen3" => Family::Qwen3,
        "gemma2" => Family::Gemma2,
        "gemma3" => Family::Gemma3,
        "phi3" => Family::Phi3,
        _ => return None,
    })
}

/// The config stored in a GGUF file's `<arch>.*` metadata, with what llama.cpp derives
/// rather than stores for Gemma: the sliding-window layer pattern (every other layer for
/// Gemma 2, five of every six for Gemma 3), the local rotary base of Gemma 3 (10,000), and
/// the attention scale (`head_dim`, except hidden/heads for the 27B models).
pub(crate) fn config_from_gguf(f: &GgufFile) -> Result<LlamaConfig, LoadError> {
    let arch = f
        .meta("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let Some(family) = family_of(arch) else {
        return Err(LoadError::Arch {
            path: f.path.clone(),
            arch: arch.to_string(),
        });
    };
    let missing = |key: &str| LoadError::MissingMeta {
        path: f.path.clone(),
        key: format!("{arch}.{key}"),
    };
    let meta = |key: &str| f.meta(&format!("{arch}.{key}"));
    let int = |key: &str| {
        meta(key)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| missing(key))
    };
    let float = |key: &str| meta(key).and_then(|v| v.as_f64());
    let token_id = |kind: &str| {
        f.meta(&format!("tokenizer.ggml.{kind}_token_id"))
            .and_then(|v| v.as_u64())
            .map(serde_json::Value::from)
    };
    let heads = int("attention.head_count")?;
    let hidden = int("embedding_length")?;
    let vocab = match int("vocab_size") {
        Ok(v) => v,
        Err(_) => match f.meta("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(tokens) => tokens.len(),
            None => f
                .tensor("token_embd.weight")
                .map(|t| t.dims[1] as usize)
                .ok_or_else(|| missing("vocab_size"))?,
        },
    };
    let mut config = LlamaConfig {
        head_dim: int("attention.key_length").ok(),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: float("rope.freq_base").unwrap_or(10000.0),
        max_position_embeddings: int("context_length").unwrap_or(2048),
        tie_word_embeddings: f.tensor("output.weight").is_none(),
        bos_token_id: token_id("bos"),
        eos_token_id: token_id("eos"),
        pad_token_id: token_id("padding"),
        family,
        ..LlamaConfig::plain(
            vocab,
            hidden,
            int("feed_forward_length")?,
            int("block_count")?,
            heads,
            int("attention.head_count_kv").unwrap_or(heads),
        )
    };
    if family.is_gemma() {
        gemma_settings(f, arch, &mut config)?;
    }
    if family == Family::Phi3 {
        // Every layer's window; rotary embeddings over part of a head are not supported.
        config.sliding_window = meta("attention.sliding_window")
            .and_then(|v| v.as_u64())
            .map(|w| w as usize);
        if let Some(dims) = int("rope.dimension_count").ok()
            && dims != config.head_dim()
        {
            return Err(LoadError::File {
                path: f.path.clone(),
                msg: format!(
                    "phi3.rope.dimension_count {dims} is not the head dimension {} (rotary embeddings on part of each head are not supported yet)",
                    config.head_dim()
                ),
            });
        }
    }
    config.validate().map_err(|error| LoadError::Config {
        path: f.path.clone(),
        error,
    })?;
    if let Some(t) = f.tensor("rope_freqs.weight") {
        rope_freqs(f, t, &mut config)?;
    }
    Ok(config)
}

/// What llama.cpp stores or derives for Gemma 2 and 3 (see [`config_from_gguf`]).
fn gemma_settings(f: &GgufFile, arch: &str, c: &mut LlamaConfig) -> Result<(), LoadError> {
    let meta = |key: &str| f.meta(&format!("{arch}.{key}"));
    c.sliding_window = meta("attention.sliding_window")
        .and_then(|v| v.as_u64())
        .map(|w| w as usize);
    let gemma2 = c.family == Family::Gemma2;
    c.layer_types = Some(
        (0..c.num_hidden_layers)
            .map(|i| {
                let sliding = if gemma2 { i % 2 == 0 } else { (i + 1) % 6 != 0 };
                if sliding {
                    LayerType::SlidingAttention
                } else {
                    LayerType::FullAttention
                }
            })
            .collect(),
    );
    c.attn_logit_softcapping = meta("attn_logit_softcapping").and_then(|v| v.as_f64());
    c.final_logit_softcapping = meta("final_logit_softcapping").and_then(|v| v.as_f64());
    // llama.cpp's LLM_TYPE_27B (46 layers for Gemma 2, 62 for Gemma 3) scales by hidden/heads.
    let is_27b = c.num_hidden_layers == if gemma2 { 46 } else { 62 };
    c.query_pre_attn_scalar = Some(if is_27b {
        (c.hidden_size / c.num_attention_heads) as f64
    } else {
        c.head_dim() as f64
    });
    if !gemma2 {
        c.rope_local_theta = Some(10_000.0);
        match meta("rope.scaling.type").and_then(|v| v.as_str()) {
            None | Some("none") => {}
            Some("linear") => {
                c.rope_linear_factor = meta("rope.scaling.factor").and_then(|v| v.as_f64());
            }
            Some(kind) => {
                return Err(LoadError::File {
                    path: f.path.clone(),
                    msg: format!("rope scaling '{kind}' is not supported for gemma3"),
                });
            }
        }
    }
    Ok(())
}

/// Builds the model on `device`, dequantizing one tensor at a time into f32, and quantizing the
/// projections while loading when `quant` is given.
pub(crate) fn load_llama_gguf_quantized<B: Backend>(
    f: &GgufFile,
    device: &B::Device,
    quant: Option<crate::quant::QuantConfig>,
) -> Result<Llama<B>, LoadError> {
    let config = config_from_gguf(f)?;
    build_llama_quantized(
        config.clone(),
        &GgufWeights { file: f, config },
        device,
        quant,
    )
}

/// A GGUF file seen through Hugging Face names and layouts.
struct GgufWeights<'a> {
    file: &'a GgufFile,
    config: LlamaConfig,
}

impl GgufWeights<'_> {
    /// llama.cpp's name for a Hugging Face tensor name, and the heads to un-permute (llama's
    /// q and k weights: llama.cpp's converter permutes only those).
    fn gguf_name(&self, hf: &str) -> (String, Option<usize>) {
        let c = &self.config;
        match hf {
            "model.embed_tokens.weight" => ("token_embd.weight".into(), None),
            "model.norm.weight" => ("output_norm.weight".into(), None),
            "lm_head.weight" => ("output.weight".into(), None),
            _ => {
                let rest = hf.strip_prefix("model.layers.").unwrap_or(hf);
                let (layer, part) = rest.split_once('.').unwrap_or(("?", rest));
                let (module, kind) = part.rsplit_once('.').unwrap_or((part, "weight"));
                let gemma = c.family.is_gemma();
                let short = match module {
                    "input_layernorm" => "attn_norm",
                    // Gemma's norm of the attention output; Llama's norm before the MLP.
                    "post_attention_layernorm" if gemma => "post_attention_norm",
                    "post_attention_layernorm" | "pre_feedforward_layernorm" => "ffn_norm",
                    "post_feedforward_layernorm" => "post_ffw_norm",
                    "self_attn.q_norm" => "attn_q_norm",
                    "self_attn.k_norm" => "attn_k_norm",
                    "self_attn.q_proj" => "attn_q",
                    "self_attn.k_proj" => "attn_k",
                    "self_attn.v_proj" => "attn_v",
                    "self_attn.o_proj" => "attn_output",
                    // Phi-3's fused projections: llama.cpp keeps gate and up in `ffn_up`.
                    "self_attn.qkv_proj" => "attn_qkv",
                    "mlp.gate_up_proj" => "ffn_up",
                    "mlp.gate_proj" => "ffn_gate",
                    "mlp.up_proj" => "ffn_up",
                    "mlp.down_proj" => "ffn_down",
                    other => other,
                };
                let permuted = c.family == Family::Llama && kind == "weight";
                let heads = match short {
                    "attn_q" if permuted => Some(c.num_attention_heads),
                    "attn_k" if permuted => Some(c.num_key_value_heads),
                    _ => None,
                };
                (format!("blk.{layer}.{short}.{kind}"), heads)
            }
        }
    }
}

impl WeightSource for GgufWeights<'_> {
    fn path(&self) -> PathBuf {
        self.file.path.clone()
    }

    fn has(&self, name: &str) -> bool {
        self.file.tensor(&self.gguf_name(name).0).is_some()
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        let (gname, heads) = self.gguf_name(name);
        let f = self.file;
        let t = f.tensor(&gname).ok_or_else(|| LoadError::MissingTensor {
            path: f.path.clone(),
            tensor: gname.clone(),
        })?;
        // GGUF lists dimensions fastest-first: the reverse of PyTorch's shape.
        let expected: Vec<u64> = shape.iter().rev().map(|&x| x as u64).collect();
        if t.dims != expected {
            return Err(LoadError::Shape {
                path: f.path.clone(),
                tensor: gname,
                expected,
                found: t.dims.clone(),
            });
        }
        let mut w = f.dequantize(t)?;
        // llama.cpp's converter stores Gemma's norm weights as `1 + w`.
        let offset = self.config.family.norm_offset();
        if offset != 0.0 && name.ends_with("norm.weight") {
            w.iter_mut().for_each(|v| *v -= offset);
        }
        Ok(match heads {
            Some(n) => unpermute_rope_rows(&w, n, shape[1]),
            None => w,
        })
    }
}

/// Llama 3.1-style rope scaling as GGUF stores it: `rope_freqs.weight`, one divisor per
/// rotary frequency (llama.cpp divides each angle by it). When the divisors are those of a
/// Llama 3 scaling (the factor from `llama.rope.scaling.factor`, else 8, 16 or 32; frequency
/// factors 1 and 4; the original context from the metadata, else 8192), the config gets that
/// scaling, which transformers' config can hold; otherwise the divisors themselves.
fn rope_freqs(
    f: &GgufFile,
    t: &super::gguf::TensorInfo,
    config: &mut LlamaConfig,
) -> Result<(), LoadError> {
    let half = config.head_dim() / 2;
    let bad = |msg: String| LoadError::File {
        path: f.path.clone(),
        msg: format!("tensor 'rope_freqs.weight': {msg}"),
    };
    let factors: Vec<f64> = f.dequantize(t)?.into_iter().map(f64::from).collect();
    if factors.len() != half {
        return Err(bad(format!(
            "has {} entries, expected {half} (half the head dimension)",
            factors.len()
        )));
    }
    if let Some(x) = factors.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
        return Err(bad(format!(
            "holds {x}; every divisor must be a positive number"
        )));
    }
    let meta_f64 = |key: &str| f.meta(key).and_then(|v| v.as_f64());
    let original =
        meta_f64("llama.rope.scaling.original_context_length").unwrap_or(8192.0) as usize;
    let candidates: Vec<f64> = match meta_f64("llama.rope.scaling.factor") {
        Some(factor) => vec![factor],
        None => vec![8.0, 16.0, 32.0],
    };
    for factor in candidates {
        let scaling = crate::model::config::Llama3RopeScaling {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: original,
        };
        let matches = factors.iter().enumerate().all(|(i, &stored)| {
            let inv = config.rope_base_inv_freq(i);
            let divisor = inv / scaling.scale(inv);
            (divisor - stored).abs() <= 1e-5 * divisor
        });
        if matches {
            config.rope_scaling = Some(scaling);
            return Ok(());
        }
    }
    config.rope_freq_factors = Some(factors);
    Ok(())
}

/// llama.cpp's converter interleaves each head's rows for its rotary kernel
/// (`w.reshape(heads, 2, hd/2, in).swapaxes(1, 2)`); this undoes it, giving the rotate-half
/// layout of Hugging Face checkpoints.
pub(crate) fn unpermute_rope_rows(w: &[f32], n_heads: usize, d_in: usize) -> Vec<f32> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // One head of dim 4, d_in 1: HF rows [a0 a1 b0 b1] (halves a, b) are stored by llama.cpp
        // as [a0 b0 a1 b1].
        let gguf = [10.0, 20.0, 11.0, 21.0];
        assert_eq!(
            unpermute_rope_rows(&gguf, 1, 1),
            vec![10.0, 11.0, 20.0, 21.0]
        );
        assert_eq!(
            crate::kernels::thin::transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }
}
