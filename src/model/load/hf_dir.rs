//! Hugging Face model directories: config.json plus one or more *.safetensors files (with
//! model.safetensors.index.json when sharded); f32, f16 and bf16 weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use super::LoadError;
use super::build::{WeightSource, build_llama_quantized};
use crate::model::Llama;
use crate::model::config::LlamaConfig;

use crate::model::config::Family;

/// Reads config.json, accepting both `rope_theta` and transformers 5's `rope_parameters`.
pub(crate) fn read_config(dir: &Path) -> Result<LlamaConfig, LoadError> {
    let path = dir.join("config.json");
    let err = |msg: String| LoadError::File {
        path: path.clone(),
        msg,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("invalid JSON: {e}")))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| err("expected a JSON object".into()))?;
    let model_type = obj
        .get("model_type")
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_string();
    let Some(family) = Family::parse(&model_type) else {
        return Err(err(format!(
            "model_type '{model_type}' is not supported (supported: {})",
            Family::MODEL_TYPES.join(", ")
        )));
    };
    if family.is_gemma() {
        // transformers' defaults for what an older config may leave out.
        let mut defaults = vec![
            ("sliding_window", serde_json::json!(4096)),
            ("query_pre_attn_scalar", serde_json::json!(256)),
        ];
        if family == Family::Gemma2 {
            defaults.push(("attn_logit_softcapping", serde_json::json!(50.0)));
            defaults.push(("final_logit_softcapping", serde_json::json!(30.0)));
        }
        for (key, value) in defaults {
            obj.entry(key).or_insert(value);
        }
        let act = obj
            .get("hidden_activation")
            .or_else(|| obj.get("hidden_act"))
            .and_then(|a| a.as_str())
            .unwrap_or("gelu_pytorch_tanh");
        if act != "gelu_pytorch_tanh" {
            return Err(err(format!(
                "hidden_activation '{act}' is not supported for {model_type} (supported: gelu_pytorch_tanh)"
            )));
        }
    }
    sliding_layers(family, obj).map_err(err)?;
    if family == Family::Qwen2 {
        // Qwen2's q, k and v always have biases; its config has no attention_bias.
        obj.remove("attention_bias");
    }
    if obj
        .get("sliding_window")
        .is_some_and(|w| w.as_u64() == Some(0))
    {
        return Err(err("sliding_window must be at least 1 (or null)".into()));
    }
    // transformers 4 writes `rope_theta` and `rope_scaling`; transformers 5 one `rope_parameters`,
    // per layer type where they differ (Gemma 3: `full_attention` and `sliding_attention`).
    let mut rope = obj
        .remove("rope_parameters")
        .or_else(|| obj.remove("rope_scaling"))
        .unwrap_or(serde_json::Value::Null);
    if let Some(local) = rope.get("sliding_attention").cloned() {
        if let Some(kind) = local.get("rope_type").and_then(|t| t.as_str())
            && kind != "default"
        {
            return Err(err(format!(
                "rope scaling '{kind}' on the sliding-window layers is not supported yet"
            )));
        }
        if let Some(theta) = local.get("rope_theta") {
            obj.insert("rope_local_base_freq".into(), theta.clone());
        }
        rope = rope
            .get("full_attention")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
    }
    // Phi-3 rotates a fraction of each head when `partial_rotary_factor` < 1 (Phi-4-mini).
    let partial = obj
        .get("partial_rotary_factor")
        .or_else(|| rope.get("partial_rotary_factor"))
        .and_then(|f| f.as_f64())
        .unwrap_or(1.0);
    if partial != 1.0 {
        return Err(err(format!(
            "partial_rotary_factor {partial} (rotary embeddings on part of each head) is not supported yet"
        )));
    }
    if !obj.contains_key("rope_theta")
        && let Some(theta) = rope.get("rope_theta")
    {
        obj.insert("rope_theta".into(), theta.clone());
    }
    if family == Family::Gemma3 {
        // transformers' defaults for Gemma 3: 1e6 globally, 1e4 on the sliding layers.
        obj.entry("rope_theta")
            .or_insert(serde_json::json!(1_000_000.0));
        obj.entry("rope_local_base_freq")
            .or_insert(serde_json::json!(10_000.0));
    } else {
        obj.remove("rope_local_base_freq");
    }
    let mut linear_factor = None;
    match rope
        .get("rope_type")
        .or_else(|| rope.get("type"))
        .and_then(|t| t.as_str())
    {
        None | Some("default") => {}
        Some("llama3") => {
            obj.insert("rope_scaling".into(), rope.clone());
        }
        Some("linear") => {
            linear_factor = Some(
                rope.get("factor")
                    .and_then(|f| f.as_f64())
                    .ok_or_else(|| err("linear rope scaling without a factor".into()))?,
            );
        }
        Some(kind) => {
            return Err(err(format!(
                "rope scaling '{kind}' is not supported yet (supported: default, linear, llama3)"
            )));
        }
    }
    let mut config: LlamaConfig =
        serde_json::from_value(v).map_err(|e| err(format!("not a Llama config: {e}")))?;
    config.family = family;
    config.rope_linear_factor = linear_factor;
    Ok(config)
}

/// Which layers attend within `sliding_window`, as `layer_types` (transformers 5 writes it;
/// older configs imply it): Mistral's window is on every layer; Qwen's only with
/// `use_sliding_window`, from layer `max_window_layers` on; Gemma 2 alternates, starting with
/// a sliding layer; Gemma 3 has one full layer in every `sliding_window_pattern` (6). Llama
/// has none.
fn sliding_layers(
    family: Family,
    obj: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    let layers = obj
        .get("num_hidden_layers")
        .and_then(|n| n.as_u64())
        .unwrap_or(0) as usize;
    let int = |obj: &serde_json::Map<String, serde_json::Value>, key: &str, default: usize| {
        obj.get(key)
            .and_then(|v| v.as_u64())
            .map_or(default, |v| v as usize)
    };
    let implied: Option<Vec<bool>> = match family {
        Family::Llama => {
            obj.remove("sliding_window");
            obj.remove("layer_types");
            return Ok(());
        }
        Family::Mistral | Family::Phi3 => return Ok(()),
        Family::Qwen2 | Family::Qwen3 => {
            if obj.get("use_sliding_window").and_then(|v| v.as_bool()) != Some(true) {
                obj.remove("sliding_window");
                obj.remove("layer_types");
                return Ok(());
            }
            let from = int(obj, "max_window_layers", 28);
            Some((0..layers).map(|i| i >= from).collect())
        }
        Family::Gemma2 => Some((0..layers).map(|i| i % 2 == 0).collect()),
        Family::Gemma3 => {
            let pattern = int(
                obj,
                "sliding_window_pattern",
                int(obj, "_sliding_window_pattern", 6),
            )
            .max(1);
            Some((0..layers).map(|i| (i + 1) % pattern != 0).collect())
        }
    };
    if obj.get("sliding_window").is_some_and(|w| w.is_null()) {
        obj.remove("layer_types");
        return Ok(());
    }
    if !obj.contains_key("layer_types")
        && let Some(sliding) = implied
    {
        let types: Vec<&str> = sliding
            .iter()
            .map(|&s| {
                if s {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        obj.insert("layer_types".into(), serde_json::json!(types));
    }
    if let Some(types) = obj.get("layer_types").and_then(|t| t.as_array())
        && let Some(bad) = types
            .iter()
            .find(|t| !matches!(t.as_str(), Some("sliding_attention" | "full_attention")))
    {
        return Err(format!(
            "layer_types entry {bad} is not supported (supported: sliding_attention, full_attention)"
        ));
    }
    Ok(())
}

/// Where one tensor's bytes are, found when the headers are parsed (once per file).
struct Entry {
    file: PathBuf,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: std::ops::Range<usize>,
}

/// The safetensors files of a directory and which file holds which tensor.
pub(crate) struct SafetensorsDir {
    dir: PathBuf,
    maps: HashMap<PathBuf, memmap2::Mmap>,
    index: HashMap<String, Entry>,
}

impl SafetensorsDir {
    pub(crate) fn open(dir: &Path) -> Result<Self, LoadError> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let err = |msg: String| LoadError::File {
                path: index_path.clone(),
                msg,
            };
            let text = std::fs::read_to_string(&index_path).map_err(|e| err(e.to_string()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| err(format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| err("no weight_map".into()))?;
            let mut files: Vec<PathBuf> = map
                .values()
                .filter_map(|f| f.as_str())
                .map(|f| dir.join(f))
                .collect();
            files.sort();
            files.dedup();
            files
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(LoadError::File {
                    path: dir.to_path_buf(),
                    msg: "no model.safetensors or model.safetensors.index.json".into(),
                });
            }
            vec![single]
        };
        let mut maps = HashMap::new();
        let mut index = HashMap::new();
        for file in files {
            let err = |msg: String| LoadError::File {
                path: file.clone(),
                msg,
            };
            let f = std::fs::File::open(&file).map_err(|e| err(format!("cannot open: {e}")))?;
            // SAFETY: read-only map of a file we do not modify.
            let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| err(e.to_string()))?;
            // `deserialize` validates the header against the file (offsets in bounds, no gaps).
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| err(format!("invalid safetensors file: {e}")))?;
            for (name, view) in st.tensors() {
                let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
                let entry = Entry {
                    file: file.clone(),
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    bytes: start..start + view.data().len(),
                };
                if let Some(other) = index.insert(name.clone(), entry) {
                    return Err(err(format!(
                        "tensor '{name}' also appears in {}",
                        other.file.display()
                    )));
                }
            }
            maps.insert(file, map);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            maps,
            index,
        })
    }
}

impl WeightSource for SafetensorsDir {
    fn path(&self) -> PathBuf {
        self.dir.clone()
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn load_quantized(
        &self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Option<crate::quant::QuantizedTensor>, LoadError> {
        let get = |key: &str| {
            self.index.get(key).map(|e| {
                (
                    e.dtype,
                    e.shape.clone(),
                    &self.maps[&e.file][e.bytes.clone()],
                )
            })
        };
        crate::quant::bnb_format::from_tensors(name, shape, get).map_err(|e| LoadError::File {
            path: self.dir.clone(),
            msg: e.to_string(),
        })
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        let entry = self
            .index
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                path: self.dir.clone(),
                tensor: name.into(),
            })?;
        let file = &entry.file;
        if entry.shape != shape {
            return Err(LoadError::Shape {
                path: file.clone(),
                tensor: name.into(),
                expected: shape.iter().map(|&x| x as u64).collect(),
                found: entry.shape.iter().map(|&x| x as u64).collect(),
            });
        }
        let data = &self.maps[file][entry.bytes.clone()];
        let values = match entry.dtype {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(LoadError::File {
                    path: file.clone(),
                    msg: format!(
                        "tensor '{name}' has dtype {other:?}; f32, f16 and bf16 are supported"
                    ),
                });
            }
        };
        self.release(entry);
        Ok(values)
    }
}

impl SafetensorsDir {
    /// Drops a converted tensor's pages from this process. They are clean pages of a read-only
    /// file map, read back from the file if touched again; without this every page read stays
    /// mapped until the load ends, so a checkpoint loaded into a smaller quantized model would
    /// still occupy its full size in resident memory (and in the measured peak).
    fn release(&self, entry: &Entry) {
        let map = &self.maps[&entry.file];
        // SAFETY: a shared, read-only file mapping: MADV_DONTNEED only drops cached pages and
        // never loses data (the file is not written through this map).
        let _ = unsafe {
            map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                entry.bytes.start,
                entry.bytes.len(),
            )
        };
    }
}

pub fn load_llama_hf_dir<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<Llama<B>, LoadError> {
    load_llama_hf_dir_quantized(dir, device, None)
}

/// [`load_llama_hf_dir`], quantizing the projections while loading when `quant` is given.
pub(crate) fn load_llama_hf_dir_quantized<B: Backend>(
    dir: &Path,
    device: &B::Device,
    quant: Option<crate::quant::QuantConfig>,
) -> Result<Llama<B>, LoadError> {
    let mut config = read_config(dir)?;
    let src = SafetensorsDir::open(dir)?;
    // Some checkpoints tie the head without saying so: no lm_head tensor means tied.
    if !src.has("lm_head.weight") {
        config.tie_word_embeddings = true;
    }
    build_llama_quantized(config, &src, device, quant)
}
