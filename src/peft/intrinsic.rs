//! Intrinsic prompt tuning (Qin et al., 2021): soft prompts live in a low-dimensional
//! "intrinsic" subspace shared across tasks. An auto-encoder is first trained on the soft
//! prompts of several tasks (`train::intrinsic::fit_subspace`, written as a subspace folder);
//! its decoder `z ↦ tanh(z·W1 + b1)·W2 + b2` then stays frozen and only the intrinsic vector
//! `z` `[dim]` trains on a new task (the model's [`IntrinsicPrompt`]). `z` starts at the
//! mean code of the source prompts (`init = "mean"`, a prompt the subspace already knows),
//! or at zero.
//!
//! A subspace folder holds `subspace.safetensors` (`encoder.weight` `[virtual·d, dim]`,
//! `encoder.bias`, `decoder.w1`, `decoder.b1`, `decoder.w2`, `decoder.b2`, `mean_code`
//! `[1, dim]`) and `subspace.json` (shapes, sources, the final reconstruction error).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde_json::json;

use super::PeftError;
use crate::model::Llama;
use crate::model::adapters::prompt::IntrinsicPrompt;
use crate::model::init;
use crate::model::params::Param;
use crate::model::save::{HostTensor, write_atomic, write_safetensors};

pub const SUBSPACE_WEIGHTS: &str = "subspace.safetensors";
pub const SUBSPACE_CONFIG: &str = "subspace.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntrinsicInit {
    /// The source prompts' mean code.
    Mean,
    Zero,
}

/// `runner.peft.intrinsic_prompt{subspace = DIR}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntrinsicConfig {
    /// The subspace folder; `None` when an adapter file brings its own decoder.
    pub subspace: Option<PathBuf>,
    pub init: IntrinsicInit,
    /// Filled from the subspace: the intrinsic dimension, the decoder's hidden width and the
    /// number of virtual tokens.
    pub dim: usize,
    pub hidden: usize,
    pub num_virtual_tokens: usize,
}

impl Default for IntrinsicConfig {
    fn default() -> Self {
        Self {
            subspace: None,
            init: IntrinsicInit::Mean,
            dim: 0,
            hidden: 0,
            num_virtual_tokens: 0,
        }
    }
}

/// A fitted subspace in host memory.
#[derive(Clone, Debug)]
pub struct Subspace {
    pub tensors: super::format::NamedTensors,
    pub dim: usize,
    pub hidden: usize,
    pub num_virtual_tokens: usize,
    pub d_model: usize,
}

impl Subspace {
    fn tensor(&self, name: &str) -> Result<&(Vec<usize>, Vec<f32>), PeftError> {
        self.tensors
            .get(name)
            .ok_or_else(|| PeftError::Invalid(format!("the subspace has no tensor {name}")))
    }

    /// Reads a subspace folder, checking every shape against its config.
    pub fn read(dir: &Path) -> Result<Self, PeftError> {
        let bad =
            |path: &Path, msg: String| PeftError::Invalid(format!("{}: {msg}", path.display()));
        let cfg_path = dir.join(SUBSPACE_CONFIG);
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| bad(&cfg_path, format!("cannot read: {e}")))?;
        let cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| bad(&cfg_path, format!("invalid JSON: {e}")))?;
        let get = |k: &str| {
            cfg.get(k)
                .and_then(serde_json::Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| bad(&cfg_path, format!("missing or non-integer '{k}'")))
        };
        let (dim, hidden, n, d) = (
            get("dim")?,
            get("hidden")?,
            get("num_virtual_tokens")?,
            get("d_model")?,
        );
        let weights = dir.join(SUBSPACE_WEIGHTS);
        let tensors = super::format::read_f32_tensors(&weights).map_err(|m| bad(&weights, m))?;
        let s = Self {
            tensors,
            dim,
            hidden,
            num_virtual_tokens: n,
            d_model: d,
        };
        for (name, shape) in [
            ("decoder.w1", vec![dim, hidden]),
            ("decoder.b1", vec![hidden]),
            ("decoder.w2", vec![hidden, n * d]),
            ("decoder.b2", vec![n * d]),
            ("mean_code", vec![1, dim]),
        ] {
            let (got, _) = s.tensor(name).map_err(|e| bad(&weights, e.to_string()))?;
            if *got != shape {
                return Err(bad(
                    &weights,
                    format!("{name} has shape {got:?}, expected {shape:?}"),
                ));
            }
        }
        Ok(s)
    }

    /// Writes the folder (each file atomically).
    pub fn write(&self, dir: &Path, extra: serde_json::Value) -> Result<(), PeftError> {
        let io = |e: crate::model::save::SaveError| PeftError::Invalid(e.to_string());
        std::fs::create_dir_all(dir)
            .map_err(|e| PeftError::Invalid(format!("{}: cannot create: {e}", dir.display())))?;
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let tensors: Vec<HostTensor> = names
            .into_iter()
            .map(|n| {
                let (shape, v) = &self.tensors[n];
                (n.clone(), shape.clone(), v.clone())
            })
            .collect();
        write_safetensors(&dir.join(SUBSPACE_WEIGHTS), &tensors).map_err(io)?;
        let mut cfg = json!({"dim": self.dim, "hidden": self.hidden,
            "num_virtual_tokens": self.num_virtual_tokens, "d_model": self.d_model});
        if let (Some(o), Some(x)) = (cfg.as_object_mut(), extra.as_object()) {
            o.extend(x.clone());
        }
        write_atomic(
            &dir.join(SUBSPACE_CONFIG),
            serde_json::to_string_pretty(&cfg).expect("JSON").as_bytes(),
        )
        .map_err(io)
    }
}

pub(crate) fn attach<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &IntrinsicConfig,
) -> Result<usize, PeftError> {
    let d = model.config.hidden_size;
    let device = model.device.clone();
    let frozen2 =
        |v: Vec<f32>, shape: [usize; 2]| Param::new(init::tensor2::<B>(v, shape, &device), false);
    let frozen1 = |v: Vec<f32>| Param::new(init::tensor1::<B>(v, &device), false);
    let (mut config, prompt) = match &config.subspace {
        Some(dir) => {
            let s = Subspace::read(dir)?;
            if s.d_model != d {
                return Err(PeftError::Invalid(format!(
                    "the subspace in {} was fitted to prompts of width {}, but the model's is {d}",
                    dir.display(),
                    s.d_model
                )));
            }
            let (dim, hidden, n) = (s.dim, s.hidden, s.num_virtual_tokens);
            let z = match config.init {
                IntrinsicInit::Mean => s.tensor("mean_code")?.1.clone(),
                IntrinsicInit::Zero => vec![0.0; dim],
            };
            let prompt = IntrinsicPrompt {
                z: Param::new(init::tensor2(z, [1, dim], &device), true),
                w1: frozen2(s.tensor("decoder.w1")?.1.clone(), [dim, hidden]),
                b1: frozen1(s.tensor("decoder.b1")?.1.clone()),
                w2: frozen2(s.tensor("decoder.w2")?.1.clone(), [hidden, n * d]),
                b2: frozen1(s.tensor("decoder.b2")?.1.clone()),
                virtual_tokens: n,
            };
            let config = IntrinsicConfig {
                dim,
                hidden,
                num_virtual_tokens: n,
                ..config.clone()
            };
            (config, prompt)
        }
        // An adapter file brings the decoder: zeros of the recorded shapes, filled on load.
        None => {
            let (dim, hidden, n) = (config.dim, config.hidden, config.num_virtual_tokens);
            if dim == 0 || hidden == 0 || n == 0 {
                return Err(PeftError::Invalid(
                    "intrinsic prompt tuning needs subspace = DIR (a folder written by runner.peft.fit_intrinsic_subspace)".into(),
                ));
            }
            let prompt = IntrinsicPrompt {
                z: Param::new(Tensor::zeros([1, dim], &device), true),
                w1: frozen2(vec![0.0; dim * hidden], [dim, hidden]),
                b1: frozen1(vec![0.0; hidden]),
                w2: frozen2(vec![0.0; hidden * n * d], [hidden, n * d]),
                b2: frozen1(vec![0.0; n * d]),
                virtual_tokens: n,
            };
            (config.clone(), prompt)
        }
    };
    super::begin_adapter(model, name)?;
    let added = config.dim;
    model.intrinsic.insert(name, prompt);
    // Saved adapters carry the decoder, so they load without the subspace folder.
    config.subspace = None;
    super::finish_adapter(model, name, super::Method::Intrinsic(config));
    Ok(added)
}
