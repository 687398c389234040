//! Writing weights: safetensors files (written to a temporary file and renamed into place, so
//! an interrupted save never leaves a half-written file) and full Hugging Face checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;

use super::Llama;
use super::config::Family;
use super::linear::Weight;
use super::llama::module_path;
use crate::quant::bnb_format::{self, RawTensor};

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
}

/// One tensor to write: name, PyTorch shape, row-major f32 values.
pub(crate) type HostTensor = (String, Vec<usize>, Vec<f32>);

pub(crate) fn host<B: Backend, const D: usize>(t: &Tensor<B, D>) -> (Vec<usize>, Vec<f32>) {
    let values = t
        .to_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data");
    (t.dims().to_vec(), values)
}

/// `[rows, cols]` row-major -> `[cols, rows]`.
pub(crate) fn transposed(shape: &[usize], values: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let (rows, cols) = (shape[0], shape[1]);
    (
        vec![cols, rows],
        crate::kernels::thin::transpose(values, rows, cols),
    )
}

/// [`crate::util::write_atomic`], creating the folder first.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), SaveError> {
    // A write in progress finishes before the watchdog may end the process.
    let _working = crate::interrupt::working();
    let err = |msg: String| SaveError::Io {
        path: path.to_path_buf(),
        msg,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create folder: {e}")))?;
    crate::util::write_atomic(path, contents).map_err(|e| err(format!("cannot write: {e}")))
}

/// An f32 safetensors file with `{"format": "pt"}` metadata, as PyTorch writers make.
pub(crate) fn write_safetensors(path: &Path, tensors: &[HostTensor]) -> Result<(), SaveError> {
    let raw: Vec<RawTensor> = tensors
        .iter()
        .map(|(name, shape, v)| {
            (
                name.clone(),
                safetensors::Dtype::F32,
                shape.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    write_safetensors_raw(path, &raw)
}

/// A safetensors file of tensors of any dtype, with `{"format": "pt"}` metadata.
pub fn write_safetensors_raw(path: &Path, tensors: &[RawTensor]) -> Result<(), SaveError> {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, b)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), b)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SaveError::Invalid(format!("{}: {e}", path.display())))?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let data = safetensors::serialize(views, metadata)
        .map_err(|e| SaveError::Invalid(format!("{}: {e}", path.display())))?;
    write_atomic(path, &data)
}

/// Saves the model as a Hugging Face checkpoint (config.json + model.safetensors, f32) that
/// transformers' `LlamaForCausalLM.from_pretrained` loads. Quantized projections are written
/// in transformers' bitsandbytes 4-bit layout, with the matching `quantization_config`.
/// Adapters are not part of a base checkpoint: merge them first (`peft::merge_and_unload`).
pub fn save_pretrained<B: Backend>(model: &Llama<B>, dir: &Path) -> Result<(), SaveError> {
    if let Some(a) = model.adapters.first() {
        return Err(SaveError::Invalid(format!(
            "the model has adapter '{}' attached; merge_and_unload() it first (or save the adapter with save_adapter)",
            a.name
        )));
    }
    let mut tensors: Vec<RawTensor> = Vec::new();
    let f32_tensor = |name: String, (shape, values): (Vec<usize>, Vec<f32>)| -> RawTensor {
        (
            name,
            safetensors::Dtype::F32,
            shape,
            values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    };
    // Gemma stores a norm weight as `w` and applies `1 + w`; runner holds `1 + w`.
    let offset = model.config.family.norm_offset();
    let norm_tensor = |name: String, w: &crate::model::params::Param<B, 1>| {
        let (shape, values) = host(&w.value);
        f32_tensor(name, (shape, values.iter().map(|v| v - offset).collect()))
    };
    let mut push = |t: RawTensor| tensors.push(t);
    push(f32_tensor(
        "model.embed_tokens.weight".into(),
        host(&model.embed_tokens.value),
    ));
    for (i, layer) in model.layers.iter().enumerate() {
        let mlp_norm = if layer.attn_out_norm.is_some() {
            "pre_feedforward_layernorm"
        } else {
            "post_attention_layernorm"
        };
        let norms = [
            ("input_layernorm", Some(&layer.input_layernorm)),
            (mlp_norm, Some(&layer.mlp_norm)),
            ("post_attention_layernorm", layer.attn_out_norm.as_ref()),
            ("post_feedforward_layernorm", layer.mlp_out_norm.as_ref()),
            ("self_attn.q_norm", layer.q_norm.as_ref()),
            ("self_attn.k_norm", layer.k_norm.as_ref()),
        ];
        for (name, w) in norms {
            if let Some(w) = w {
                push(norm_tensor(format!("model.layers.{i}.{name}.weight"), w));
            }
        }
        for &(t, ref lin) in &layer.projections {
            if let Some(b) = &lin.base_bias {
                push(f32_tensor(
                    format!("{}.bias", module_path(i, t)),
                    host(&b.value),
                ));
            }
            let name = format!("{}.weight", module_path(i, t));
            match &lin.weight {
                Weight::Dense(p) => {
                    let (shape, values) = host(&p.value);
                    push(f32_tensor(name, transposed(&shape, &values)));
                }
                Weight::Quantized(q) => {
                    for t in bnb_format::to_tensors(&name, q)
                        .map_err(|e| SaveError::Invalid(e.to_string()))?
                    {
                        push(t);
                    }
                }
            }
        }
    }
    push(norm_tensor("model.norm.weight".into(), &model.norm));
    if let Some(head) = &model.lm_head {
        push(f32_tensor("lm_head.weight".into(), host(&head.value)));
    }
    if let Some(score) = &model.score {
        push(f32_tensor("score.weight".into(), host(&score.value)));
    }
    let c = &model.config;
    if c.rope_freq_factors.is_some() {
        return Err(SaveError::Invalid(
            "the model's rope frequency factors (GGUF rope_freqs.weight) match no Llama 3 rope scaling, and transformers' config.json cannot hold them".into(),
        ));
    }
    let mut config = serde_json::to_value(c).map_err(|e| SaveError::Invalid(e.to_string()))?;
    let obj = config
        .as_object_mut()
        .expect("a struct serializes to an object");
    // A sliding window is Mistral's: transformers' Llama would ignore it.
    let family = match c.family {
        Family::Llama if c.sliding_window.is_some() => Family::Mistral,
        f => f,
    };
    if c.sliding_window.is_none() {
        obj.remove("sliding_window");
    }
    let model_type = family.model_type();
    let family = family.class_prefix();
    let architecture = if model.score.is_some() {
        // One label: transformers reads `num_labels` from `id2label`.
        obj.insert("id2label".into(), serde_json::json!({"0": "LABEL_0"}));
        obj.insert("label2id".into(), serde_json::json!({"LABEL_0": 0}));
        format!("{family}ForSequenceClassification")
    } else {
        format!("{family}ForCausalLM")
    };
    obj.insert("architectures".into(), serde_json::json!([architecture]));
    obj.insert("model_type".into(), serde_json::json!(model_type));
    if c.family.is_gemma() {
        // Explicit nulls stay: Gemma 2's config defaults the soft-capping to 30 and 50.
        obj.insert(
            "hidden_activation".into(),
            serde_json::json!("gelu_pytorch_tanh"),
        );
    } else {
        obj.insert("hidden_act".into(), serde_json::json!("silu"));
        obj.retain(|_, v| !v.is_null());
    }
    obj.insert("torch_dtype".into(), serde_json::json!("float32"));
    obj.insert("head_dim".into(), serde_json::json!(c.head_dim()));
    if c.rope_scaling.is_none() {
        obj.remove("rope_scaling");
    } else if let Some(s) = obj.get_mut("rope_scaling").and_then(|s| s.as_object_mut()) {
        s.insert("rope_type".into(), serde_json::json!("llama3"));
    }
    // transformers' Gemma configs type it as an integer.
    if let Some(v) = c.query_pre_attn_scalar.filter(|v| v.fract() == 0.0) {
        obj.insert("query_pre_attn_scalar".into(), serde_json::json!(v as u64));
    }
    // Qwen's window applies only with `use_sliding_window`, from `max_window_layers` on.
    if matches!(c.family, Family::Qwen2 | Family::Qwen3) && c.sliding_window.is_some() {
        let first = (0..c.num_hidden_layers).find(|&i| c.is_sliding(i));
        obj.insert("use_sliding_window".into(), serde_json::json!(true));
        obj.insert(
            "max_window_layers".into(),
            serde_json::json!(first.unwrap_or(c.num_hidden_layers)),
        );
    }
    if let Some(factor) = c.rope_linear_factor {
        obj.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "linear", "factor": factor}),
        );
    }
    if let Some(q) = crate::model::quantize::model_quant_config(model) {
        obj.insert(
            "quantization_config".into(),
            bnb_format::quantization_config(q.dtype, q.double),
        );
    }
    write_safetensors_raw(&dir.join("model.safetensors"), &tensors)?;
    let text = serde_json::to_string_pretty(&config).expect("JSON");
    write_atomic(&dir.join("config.json"), text.as_bytes())
}
