//! Adapters on disk. LoRA, DoRA, (IA)3, LoKr, prompt tuning and prefix tuning use Hugging Face
//! PEFT's format (`adapter_config.json` + `adapter_model.safetensors`, PEFT's key names and
//! `[out, in]` shapes), so adapters move between runner and PEFT in both directions.
//! The methods PEFT has no format for (bottleneck adapters, BitFit, LN tuning, KronA,
//! Compacter, AdaMix, WARP, intrinsic prompts, Ladder Side-Tuning, AttentionFusion, LeTS)
//! use the same two files with a `RUNNER_*` peft_type and runner's parameter names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde_json::{Value, json};

use super::bottleneck::{Activation, BottleneckConfig, Placement};
use super::ia3::Ia3Config;
use super::krona::KronaConfig;
use super::lokr::{LokrConfig, LokrInit};
use super::lora::{LoraConfig, LoraInit};
use super::prompt::{PrefixConfig, PromptConfig, PromptInit};
use super::selective::BitFitConfig;
use super::targets::Targets;
use super::warp::WarpConfig;
use super::{Method, PeftError};
use crate::model::Llama;
use crate::model::llama::module_path;
use crate::model::params::{Param, ParamVisitor};
use crate::model::save::{
    HostTensor, SaveError, host, transposed, write_atomic, write_safetensors,
};

pub(crate) const CONFIG_FILE: &str = "adapter_config.json";
pub(crate) const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Where PEFT saves a sequence-classification adapter's copy of the head (`modules_to_save`).
const SCORE_KEY: &str = "base_model.model.score.weight";

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error(transparent)]
    Save(#[from] SaveError),
    #[error(transparent)]
    Peft(#[from] PeftError),
}

/// Writes adapter `name` of `model` into `dir`.
pub fn save_adapter<B: Backend>(
    model: &Llama<B>,
    name: &str,
    dir: &Path,
) -> Result<(), FormatError> {
    let info = model
        .adapters
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| PeftError::UnknownAdapter {
            name: name.to_string(),
            known: model
                .adapters
                .iter()
                .map(|a| a.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let c = &model.config;
    let common = |peft_type: &str| {
        json!({"peft_type": peft_type, "task_type": "CAUSAL_LM", "inference_mode": true, "base_model_name_or_path": null,
               "revision": null, "auto_mapping": null, "modules_to_save": null})
    };
    let mut tensors: Vec<HostTensor> = Vec::new();
    let mut config = match Method::of(info) {
        Method::Lora(l) => {
            for (i, layer) in model.layers.iter().enumerate() {
                for t in layer.kinds() {
                    let Some(a) = layer.proj(t).lora.get(name) else {
                        continue;
                    };
                    let key = format!("base_model.model.{}", module_path(i, t));
                    let (shape, values) = host(&a.a.value);
                    let (shape, values) = transposed(&shape, &values);
                    tensors.push((format!("{key}.lora_A.weight"), shape, values));
                    let (shape, values) = host(&a.b.value);
                    let (shape, values) = transposed(&shape, &values);
                    tensors.push((format!("{key}.lora_B.weight"), shape, values));
                    if let Some(m) = &a.magnitude {
                        let (shape, values) = host(&m.value);
                        tensors.push((format!("{key}.lora_magnitude_vector"), shape, values));
                    }
                }
            }
            let mut v = common("LORA");
            let init = match l.init {
                LoraInit::Kaiming => json!(true),
                LoraInit::Gaussian => json!("gaussian"),
                LoraInit::Pissa => json!("pissa"),
            };
            let o = v.as_object_mut().unwrap();
            for (k, x) in [
                ("r", json!(l.rank)),
                ("lora_alpha", json!(l.alpha)),
                ("lora_dropout", json!(l.dropout)),
                ("target_modules", l.targets.to_json(c.projections())),
                ("use_rslora", json!(l.rslora)),
                ("use_dora", json!(l.dora)),
                ("init_lora_weights", init),
                ("bias", json!("none")),
                ("fan_in_fan_out", json!(false)),
            ] {
                o.insert(k.into(), x);
            }
            no_per_module_settings(o);
            v
        }
        Method::Ia3(cfg) => {
            for (i, layer) in model.layers.iter().enumerate() {
                for t in layer.kinds() {
                    let Some(v) = layer.proj(t).ia3.get(name) else {
                        continue;
                    };
                    let (shape, values) = host(&v.vector.value);
                    let shape = if v.on_input {
                        vec![1, shape[0]]
                    } else {
                        vec![shape[0], 1]
                    };
                    tensors.push((
                        format!("base_model.model.{}.ia3_l", module_path(i, t)),
                        shape,
                        values,
                    ));
                }
            }
            let mut v = common("IA3");
            let o = v.as_object_mut().unwrap();
            o.insert(
                "target_modules".into(),
                cfg.targets.to_json(c.projections()),
            );
            o.insert(
                "feedforward_modules".into(),
                cfg.feedforward.to_json(c.projections()),
            );
            o.insert("fan_in_fan_out".into(), json!(false));
            o.insert("init_ia3_weights".into(), json!(true));
            v
        }
        Method::Lokr(l) => {
            tensors = runner_tensors(model, name, PEFT_PREFIX);
            let mut v = common("LOKR");
            let init = match l.init {
                LokrInit::Peft => json!(true),
                LokrInit::Lycoris => json!("lycoris"),
                LokrInit::Random => json!(false),
            };
            let o = v.as_object_mut().unwrap();
            for (k, x) in [
                ("r", json!(l.rank)),
                ("alpha", json!(l.alpha)),
                ("rank_dropout", json!(l.rank_dropout)),
                ("module_dropout", json!(l.module_dropout)),
                ("use_effective_conv2d", json!(false)),
                ("decompose_both", json!(l.decompose_both)),
                ("decompose_factor", json!(l.decompose_factor)),
                ("rank_dropout_scale", json!(l.rank_dropout_scale)),
                ("target_modules", l.targets.to_json(c.projections())),
                ("init_weights", init),
            ] {
                o.insert(k.into(), x);
            }
            no_per_module_settings(o);
            v
        }
        Method::Prompt(p) => {
            let (shape, values) = host(&model.prompt.get(name).expect("attached").value);
            tensors.push(("prompt_embeddings".into(), shape, values));
            let mut v = common("PROMPT_TUNING");
            let (init, text) = match (&p.init, &p.init_text) {
                (PromptInit::Tokens(_), text) => ("TEXT", text.clone()),
                (PromptInit::SampleVocab, _) => ("SAMPLE_VOCAB", None),
                (PromptInit::Random, _) => ("RANDOM", None),
            };
            let o = v.as_object_mut().unwrap();
            for (k, x) in [
                ("num_virtual_tokens", json!(p.num_virtual_tokens)),
                ("token_dim", json!(c.hidden_size)),
                ("num_transformer_submodules", json!(1)),
                ("num_attention_heads", json!(c.num_attention_heads)),
                ("num_layers", json!(c.num_hidden_layers)),
                ("prompt_tuning_init", json!(init)),
                ("prompt_tuning_init_text", json!(text)),
                ("tokenizer_name_or_path", json!(null)),
                ("tokenizer_kwargs", json!(null)),
            ] {
                o.insert(k.into(), x);
            }
            v
        }
        Method::Prefix(p) => {
            let (shape, values) = host(&model.prefix.get(name).expect("attached").table());
            tensors.push(("prompt_embeddings".into(), shape, values));
            let kv = c.num_key_value_heads * c.head_dim();
            let mut v = common("PREFIX_TUNING");
            let o = v.as_object_mut().unwrap();
            for (k, x) in [
                ("num_virtual_tokens", json!(p.num_virtual_tokens)),
                ("token_dim", json!(kv)),
                ("num_transformer_submodules", json!(1)),
                ("num_attention_heads", json!(c.num_key_value_heads)),
                ("num_layers", json!(c.num_hidden_layers)),
                ("encoder_hidden_size", json!(p.projection.unwrap_or(kv))),
                ("prefix_projection", json!(p.projection.is_some())),
            ] {
                o.insert(k.into(), x);
            }
            v
        }
        Method::Bottleneck(b) => {
            tensors = runner_tensors(model, name, "");
            json!({"peft_type": "RUNNER_BOTTLENECK", "placement": match b.placement { Placement::Houlsby => "houlsby", Placement::Pfeiffer => "pfeiffer" },
                   "reduction_factor": b.reduction_factor, "activation": format!("{:?}", b.activation).to_lowercase()})
        }
        Method::Krona(k) => {
            tensors = runner_tensors(model, name, "");
            json!({"peft_type": "RUNNER_KRONA", "placement": k.placement, "scale": k.scale,
                   "target_modules": k.targets.to_json(c.projections())})
        }
        Method::Compacter(cfg) => {
            tensors = runner_tensors(model, name, "");
            json!({"peft_type": "RUNNER_COMPACTER", "config": cfg})
        }
        Method::AdaMix(cfg) => {
            tensors = runner_tensors(model, name, "");
            json!({"peft_type": "RUNNER_ADAMIX", "config": cfg})
        }
        Method::Ladder(cfg) => {
            tensors = runner_tensors(model, name, "");
            json!({"peft_type": "RUNNER_LADDER", "config": cfg})
        }
        Method::Lets(cfg) => {
            tensors = runner_tensors(model, name, "");
            json!({"peft_type": "RUNNER_LETS", "config": cfg})
        }
        Method::AttentionFusion => {
            tensors = runner_tensors(model, name, "");
            json!({"peft_type": "RUNNER_ATTENTION_FUSION"})
        }
        Method::Intrinsic(cfg) => {
            tensors = runner_tensors(model, name, "");
            json!({"peft_type": "RUNNER_INTRINSIC_PROMPT", "config": cfg})
        }
        Method::Warp(w) => {
            tensors = runner_tensors(model, name, "");
            json!({"peft_type": "RUNNER_WARP", "num_virtual_tokens": w.prompt.num_virtual_tokens,
                   "labels": w.labels, "label_words": w.label_words})
        }
        Method::BitFit(b) => {
            tensors = runner_tensors(model, name, "");
            json!({"peft_type": "RUNNER_BITFIT", "target_modules": b.targets.to_json(c.projections())})
        }
        Method::LnTuning => {
            tensors = runner_tensors(model, name, "");
            json!({"peft_type": "RUNNER_LN_TUNING"})
        }
        Method::Full => unreachable!("full fine-tuning is not an adapter"),
    };
    let o = config.as_object_mut().unwrap();
    if let Some(score) = model.score_tuned.get(name) {
        // A reward model's adapter carries its trained head, as PEFT saves a SEQ_CLS model.
        let (shape, values) = host(&score.value);
        tensors.push((SCORE_KEY.into(), shape, values));
        o.insert("task_type".into(), json!("SEQ_CLS"));
        o.insert("modules_to_save".into(), json!(["score"]));
    }
    o.insert("runner_version".into(), json!(env!("CARGO_PKG_VERSION")));
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors)?;
    write_atomic(
        &dir.join(CONFIG_FILE),
        serde_json::to_string_pretty(&config)
            .expect("JSON")
            .as_bytes(),
    )?;
    Ok(())
}

/// The virtual token table `[virtual, d_model]` of a prompt-tuning adapter folder (PEFT's or
/// runner's).
pub fn read_prompt_table(dir: &Path) -> Result<(Vec<usize>, Vec<f32>), String> {
    let path = dir.join(WEIGHTS_FILE);
    let mut tensors = read_f32_tensors(&path).map_err(|m| format!("{}: {m}", path.display()))?;
    tensors
        .remove("prompt_embeddings")
        .filter(|(shape, _)| shape.len() == 2)
        .ok_or_else(|| {
            format!(
                "{}: no prompt_embeddings [virtual, d_model] tensor: not a prompt-tuning adapter",
                path.display()
            )
        })
}

/// Host tensors by name: shape and f32 values.
pub(crate) type NamedTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of a safetensors file as f32 (from F32, F16 or BF16), by name.
pub(crate) fn read_f32_tensors(path: &Path) -> Result<NamedTensors, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("not a safetensors file: {e}"))?;
    let mut tensors = NamedTensors::new();
    for (key, view) in file.tensors() {
        let values = match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::F16 => view
                .data()
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => view
                .data()
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32())
                .collect(),
            other => {
                return Err(format!(
                    "tensor {key} has dtype {other:?}; expected F32, F16 or BF16"
                ));
            }
        };
        tensors.insert(key, (view.shape().to_vec(), values));
    }
    Ok(tensors)
}

/// What PEFT puts before the model's own parameter names (`layers.0.self_attn.q_proj`).
const PEFT_PREFIX: &str = "base_model.model.model.";

/// The adapter's parameters under the model's own names with the `[name]` marker removed,
/// after `key_prefix`.
fn runner_tensors<B: Backend>(model: &Llama<B>, name: &str, key_prefix: &str) -> Vec<HostTensor> {
    struct Collect<'a> {
        marker: String,
        prefix: &'a str,
        out: &'a mut Vec<HostTensor>,
    }
    impl<B: Backend> ParamVisitor<B> for Collect<'_> {
        fn visit1(&mut self, n: &str, p: &mut Param<B, 1>) {
            if n.contains(&self.marker) {
                let (shape, values) = host(&p.value);
                let key = format!("{}{}", self.prefix, n.replace(&self.marker, ""));
                self.out.push((key, shape, values));
            }
        }
        fn visit2(&mut self, n: &str, p: &mut Param<B, 2>) {
            // The score head's copy is saved under PEFT's name for every method.
            if n.contains(&self.marker) && !n.starts_with("score.") {
                let (shape, values) = host(&p.value);
                let key = format!("{}{}", self.prefix, n.replace(&self.marker, ""));
                self.out.push((key, shape, values));
            }
        }
    }
    let mut out = Vec::new();
    model.clone().visit(&mut Collect {
        marker: format!("[{name}]"),
        prefix: key_prefix,
        out: &mut out,
    });
    out
}

/// Reads an adapter folder (written by runner or by PEFT) and attaches it to `model` as
/// `name`, active. Returns the parameters added. On any error the model is unchanged.
pub fn load_adapter<B: Backend>(
    model: &mut Llama<B>,
    dir: &Path,
    name: &str,
) -> Result<usize, FormatError> {
    let config_path = dir.join(CONFIG_FILE);
    let file_err = |path: &Path, msg: String| FormatError::File {
        path: path.to_path_buf(),
        msg,
    };
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| file_err(&config_path, format!("cannot read: {e}")))?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| file_err(&config_path, format!("invalid JSON: {e}")))?;
    let method = method_from_config(&config).map_err(|msg| file_err(&config_path, msg))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let mut tensors = read_f32_tensors(&weights_path).map_err(|m| file_err(&weights_path, m))?;
    // Attach to a copy (tensors are shared, not copied) so that a bad file changes nothing.
    let mut updated = model.clone();
    let added = method.attach(&mut updated, name)?;
    // A causal-LM adapter (an SFT policy) loaded into a model with a score head keeps the copy
    // of the base head that attaching gave it (PPO's policy beside its value and reward
    // adapters); a reward model's adapter must bring its head.
    let seq_cls = config.get("task_type").and_then(Value::as_str) == Some("SEQ_CLS");
    let head_in_file = tensors.contains_key(SCORE_KEY) || seq_cls;
    fill(&mut updated, name, &method, &mut tensors, head_in_file)
        .map_err(|msg| file_err(&weights_path, msg))?;
    if tensors.contains_key(SCORE_KEY) && updated.score.is_none() {
        return Err(file_err(
            &weights_path,
            "the adapter carries a reward model's score head, but the model has none (model:add_score_head() adds one)".into(),
        ));
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(file_err(
            &weights_path,
            format!(
                "unexpected tensor {extra} (not part of a {} adapter for this model)",
                method.kind()
            ),
        ));
    }
    *model = updated;
    Ok(added)
}

/// LoRA's and LoKr's per-module settings, which runner does not read: a file that uses them
/// is refused rather than loaded wrong.
const PER_MODULE_KEYS: [&str; 5] = [
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
    "layers_pattern",
    "exclude_modules",
];

/// Writes [`PER_MODULE_KEYS`] as PEFT does when they are unused: the two patterns as empty
/// maps, the rest null.
fn no_per_module_settings(o: &mut serde_json::Map<String, Value>) {
    for k in PER_MODULE_KEYS {
        let unused = if matches!(k, "rank_pattern" | "alpha_pattern") {
            json!({})
        } else {
            json!(null)
        };
        o.insert(k.into(), unused);
    }
}

/// A runner method's settings, stored whole under "config".
fn embedded_config<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
    serde_json::from_value(v.get("config").cloned().unwrap_or_default())
        .map_err(|e| format!("'config': {e}"))
}

fn method_from_config(v: &Value) -> Result<Method, String> {
    let peft_type = v
        .get("peft_type")
        .and_then(Value::as_str)
        .ok_or("missing peft_type")?;
    let num = |k: &str| {
        v.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("missing or non-numeric '{k}'"))
    };
    let count = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .ok_or_else(|| format!("missing or non-integer '{k}'"))
    };
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let targets = |k: &str| {
        v.get(k)
            .and_then(Targets::from_json)
            .ok_or_else(|| format!("missing or invalid '{k}'"))
    };
    let unsupported = |k: &str, ok: &dyn Fn(&Value) -> bool| match v.get(k) {
        Some(x) if !ok(x) => Err(format!("'{k}' = {x} is not supported")),
        _ => Ok(()),
    };
    let empty = |x: &Value| {
        x.is_null()
            || x.as_object().is_some_and(|o| o.is_empty())
            || x.as_array().is_some_and(|a| a.is_empty())
    };
    let seq_cls = v.get("task_type").and_then(Value::as_str) == Some("SEQ_CLS");
    if v.get("task_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "CAUSAL_LM" && t != "SEQ_CLS")
    {
        return Err(format!(
            "task_type {} is not supported (CAUSAL_LM and SEQ_CLS are)",
            v["task_type"]
        ));
    }
    // A reward model's adapter saves its head (PEFT lists `classifier` too, for other
    // architectures' head names); nothing else may be saved whole.
    let heads_only = |x: &Value| {
        empty(x)
            || (seq_cls
                && x.as_array()
                    .is_some_and(|a| a.iter().all(|m| m == "score" || m == "classifier")))
    };
    unsupported("modules_to_save", &heads_only)?;
    Ok(match peft_type {
        "LORA" => {
            for k in PER_MODULE_KEYS {
                unsupported(k, &empty)?;
            }
            unsupported("bias", &|x| x == "none")?;
            unsupported("fan_in_fan_out", &|x| x == false)?;
            unsupported("lora_bias", &|x| x == false)?;
            let init = match v.get("init_lora_weights") {
                Some(Value::String(s)) if s == "gaussian" => LoraInit::Gaussian,
                Some(Value::String(s)) if s.starts_with("pissa") => LoraInit::Pissa,
                _ => LoraInit::Kaiming,
            };
            Method::Lora(LoraConfig {
                rank: count("r")?,
                alpha: num("lora_alpha")?,
                dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
                targets: targets("target_modules")?,
                rslora: flag("use_rslora"),
                // The weights come from the file; PiSSA's residual base is the caller's to supply.
                init: if init == LoraInit::Pissa {
                    LoraInit::Kaiming
                } else {
                    init
                },
                dora: flag("use_dora"),
                seed: 0,
            })
        }
        "LOKR" => {
            for k in PER_MODULE_KEYS {
                unsupported(k, &empty)?;
            }
            Method::Lokr(LokrConfig {
                rank: count("r")?,
                alpha: num("alpha")?,
                targets: targets("target_modules")?,
                decompose_both: flag("decompose_both"),
                decompose_factor: v
                    .get("decompose_factor")
                    .and_then(Value::as_i64)
                    .unwrap_or(-1),
                rank_dropout: v.get("rank_dropout").and_then(Value::as_f64).unwrap_or(0.0),
                rank_dropout_scale: flag("rank_dropout_scale"),
                module_dropout: v
                    .get("module_dropout")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0),
                init: match v.get("init_weights") {
                    Some(Value::String(s)) if s == "lycoris" => LokrInit::Lycoris,
                    Some(Value::Bool(false)) => LokrInit::Random,
                    _ => LokrInit::Peft,
                },
                seed: 0,
            })
        }
        "IA3" => Method::Ia3(Ia3Config {
            targets: targets("target_modules")?,
            feedforward: targets("feedforward_modules")?,
        }),
        "PROMPT_TUNING" => {
            unsupported("num_transformer_submodules", &|x| x == 1)?;
            Method::Prompt(PromptConfig {
                num_virtual_tokens: count("num_virtual_tokens")?,
                init: PromptInit::Random,
                init_text: v
                    .get("prompt_tuning_init_text")
                    .and_then(Value::as_str)
                    .map(String::from),
                seed: 0,
            })
        }
        "PREFIX_TUNING" => {
            unsupported("num_transformer_submodules", &|x| x == 1)?;
            // PEFT saves the projected table, so a reparameterised prefix loads as a plain one.
            Method::Prefix(PrefixConfig {
                num_virtual_tokens: count("num_virtual_tokens")?,
                projection: None,
                seed: 0,
            })
        }
        "RUNNER_BOTTLENECK" => Method::Bottleneck(BottleneckConfig {
            placement: match v.get("placement").and_then(Value::as_str) {
                Some("pfeiffer") => Placement::Pfeiffer,
                Some("houlsby") => Placement::Houlsby,
                other => return Err(format!("unknown placement {other:?}")),
            },
            reduction_factor: count("reduction_factor")?,
            activation: v
                .get("activation")
                .and_then(Value::as_str)
                .and_then(Activation::parse)
                .ok_or("missing or unknown 'activation'")?,
            seed: 0,
        }),
        "RUNNER_BITFIT" => Method::BitFit(BitFitConfig {
            targets: targets("target_modules")?,
        }),
        "RUNNER_LN_TUNING" => Method::LnTuning,
        "RUNNER_KRONA" => Method::Krona(KronaConfig {
            placement: serde_json::from_value(v.get("placement").cloned().unwrap_or_default())
                .map_err(|e| format!("'placement': {e}"))?,
            targets: targets("target_modules")?,
            scale: num("scale")?,
            seed: 0,
        }),
        "RUNNER_COMPACTER" => Method::Compacter(embedded_config(v)?),
        "RUNNER_ADAMIX" => Method::AdaMix(embedded_config(v)?),
        "RUNNER_INTRINSIC_PROMPT" => Method::Intrinsic(embedded_config(v)?),
        "RUNNER_LADDER" => Method::Ladder(embedded_config(v)?),
        "RUNNER_ATTENTION_FUSION" => Method::AttentionFusion,
        "RUNNER_LETS" => Method::Lets(embedded_config(v)?),
        "RUNNER_WARP" => {
            let labels: Vec<u32> =
                serde_json::from_value(v.get("labels").cloned().unwrap_or_default())
                    .map_err(|e| format!("'labels': {e}"))?;
            Method::Warp(WarpConfig {
                prompt: PromptConfig {
                    num_virtual_tokens: count("num_virtual_tokens")?,
                    ..Default::default()
                },
                label_words: serde_json::from_value(
                    v.get("label_words").cloned().unwrap_or_default(),
                )
                .unwrap_or_default(),
                labels,
            })
        }
        other => {
            return Err(format!(
                "peft_type {other} is not supported (LORA, LOKR, IA3, PROMPT_TUNING, PREFIX_TUNING and runner's own types are)"
            ));
        }
    })
}

/// Copies the file's tensors into the freshly attached adapter, removing each one used; the
/// adapter's copy of the score head too when `head_in_file`.
fn fill<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    method: &Method,
    tensors: &mut HashMap<String, (Vec<usize>, Vec<f32>)>,
    head_in_file: bool,
) -> Result<(), String> {
    let device = model.device.clone();
    let mut take = |key: &str, shape: &[usize]| -> Result<Vec<f32>, String> {
        let (s, values) = tensors
            .remove(key)
            .ok_or_else(|| format!("missing tensor {key}"))?;
        if s != shape {
            return Err(format!("tensor {key} has shape {s:?}, expected {shape:?}"));
        }
        Ok(values)
    };
    let set2 = |p: &mut Param<B, 2>, values: Vec<f32>, shape: [usize; 2]| {
        *p = Param::new(
            crate::model::init::tensor2(values, shape, &device),
            p.trainable,
        )
    };
    let set1 = |p: &mut Param<B, 1>, values: Vec<f32>| {
        *p = Param::new(crate::model::init::tensor1(values, &device), p.trainable)
    };
    match method {
        Method::Lora(_) | Method::Ia3(_) => {
            for (i, layer) in model.layers.iter_mut().enumerate() {
                for (t, lin) in &mut layer.projections {
                    let t = *t;
                    let (d_in, d_out) = (lin.d_in(), lin.d_out());
                    let key = format!("base_model.model.{}", module_path(i, t));
                    if let Some(a) = lin.lora.get_mut(name) {
                        let r = a.a.value.dims()[1];
                        let values = take(&format!("{key}.lora_A.weight"), &[r, d_in])?;
                        set2(
                            &mut a.a,
                            crate::kernels::thin::transpose(&values, r, d_in),
                            [d_in, r],
                        );
                        let values = take(&format!("{key}.lora_B.weight"), &[d_out, r])?;
                        set2(
                            &mut a.b,
                            crate::kernels::thin::transpose(&values, d_out, r),
                            [r, d_out],
                        );
                        if let Some(m) = &mut a.magnitude {
                            set1(m, take(&format!("{key}.lora_magnitude_vector"), &[d_out])?);
                        }
                    }
                    if let Some(v) = lin.ia3.get_mut(name) {
                        let shape = if v.on_input { [1, d_in] } else { [d_out, 1] };
                        set1(&mut v.vector, take(&format!("{key}.ia3_l"), &shape)?);
                    }
                }
            }
        }
        Method::Prompt(_) => {
            let p = model.prompt.get_mut(name).expect("attached");
            let shape: [usize; 2] = p.value.dims();
            set2(p, take("prompt_embeddings", &shape)?, shape);
        }
        Method::Prefix(_) => {
            let p = model.prefix.get_mut(name).expect("attached");
            let shape: [usize; 2] = p.embedding.value.dims();
            set2(&mut p.embedding, take("prompt_embeddings", &shape)?, shape);
        }
        Method::Lokr(_)
        | Method::Krona(_)
        | Method::Bottleneck(_)
        | Method::Compacter(_)
        | Method::AdaMix(_)
        | Method::Warp(_)
        | Method::Intrinsic(_)
        | Method::Ladder(_)
        | Method::AttentionFusion
        | Method::Lets(_)
        | Method::BitFit(_)
        | Method::LnTuning => {
            struct Assign<'a, F: FnMut(&str, &[usize]) -> Result<Vec<f32>, String>> {
                marker: String,
                prefix: &'static str,
                take: &'a mut F,
                error: Option<String>,
            }
            impl<B: Backend, F: FnMut(&str, &[usize]) -> Result<Vec<f32>, String>> ParamVisitor<B>
                for Assign<'_, F>
            {
                fn visit1(&mut self, n: &str, p: &mut Param<B, 1>) {
                    if !n.contains(&self.marker) || self.error.is_some() {
                        return;
                    }
                    let key = format!("{}{}", self.prefix, n.replace(&self.marker, ""));
                    match (self.take)(&key, &p.value.dims()) {
                        Ok(v) => {
                            *p = Param::new(
                                crate::model::init::tensor1(v, &p.value.device()),
                                p.trainable,
                            )
                        }
                        Err(e) => self.error = Some(e),
                    }
                }
                fn visit2(&mut self, n: &str, p: &mut Param<B, 2>) {
                    if !n.contains(&self.marker) || n.starts_with("score.") || self.error.is_some()
                    {
                        return;
                    }
                    let dims = p.value.dims();
                    let key = format!("{}{}", self.prefix, n.replace(&self.marker, ""));
                    match (self.take)(&key, &dims) {
                        Ok(v) => {
                            *p = Param::new(
                                crate::model::init::tensor2(v, dims, &p.value.device()),
                                p.trainable,
                            )
                        }
                        Err(e) => self.error = Some(e),
                    }
                }
            }
            let mut assign = Assign {
                marker: format!("[{name}]"),
                // LoKr's keys are PEFT's; runner's own types keep the model's names.
                prefix: if matches!(method, Method::Lokr(_)) {
                    PEFT_PREFIX
                } else {
                    ""
                },
                take: &mut take,
                error: None,
            };
            model.visit(&mut assign);
            if let Some(e) = assign.error {
                return Err(e);
            }
        }
        Method::Full => unreachable!("full fine-tuning is not an adapter"),
    }
    if let Some(score) = model.score_tuned.get_mut(name).filter(|_| head_in_file) {
        let shape: [usize; 2] = score.value.dims();
        let values = take(SCORE_KEY, &shape).map_err(|e| {
            format!("{e}: the model is a reward model, and its adapters carry the score head")
        })?;
        set2(score, values, shape);
    }
    Ok(())
}
