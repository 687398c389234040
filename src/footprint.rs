//! Memory you can predict: a breakdown of what a training (or inference) run holds — weights,
//! adapters, gradients, optimizer states, activations — at each precision, from the model's
//! shape alone. The activation term counts the tensors runner's autodiff graph keeps for the
//! backward pass, layer by layer (see `activation_floats`).

use serde::Serialize;

use crate::model::LlamaConfig;
use crate::model::llama::{Proj, projection_shape};
use crate::quant::{QuantConfig, QuantDtype, QuantError};

/// How the frozen projection weights are stored (not the type matmuls compute in, which is
/// [`crate::kernels::precision::Precision`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum WeightStorage {
    F32,
    F16,
    Bf16,
    Quant(QuantConfig),
}

impl WeightStorage {
    /// `fp32`, `fp16`, `bf16`, or a quantized type (`int8`, `int4`, `fp4`, `nf4`) with its block
    /// size and double quantization.
    pub fn parse(name: &str, block: usize, double: bool) -> Result<Self, QuantError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Self::F32,
            "fp16" | "f16" | "float16" => Self::F16,
            "bf16" | "bfloat16" => Self::Bf16,
            other => {
                let dtype = QuantDtype::parse(other).map_err(|_| {
                    QuantError::UnknownDtype(format!(
                        "{other}' (expected fp32, fp16, bf16, int8, int4, fp4 or nf4"
                    ))
                })?;
                let q = QuantConfig {
                    dtype,
                    block,
                    double,
                };
                q.validate_block()?;
                Self::Quant(q)
            }
        })
    }

    pub(crate) fn name(&self) -> String {
        match self {
            Self::F32 => "fp32".into(),
            Self::F16 => "fp16".into(),
            Self::Bf16 => "bf16".into(),
            Self::Quant(q) if q.double => format!("{}+dq", q.dtype),
            Self::Quant(q) => q.dtype.name().into(),
        }
    }

    /// Bytes per stored weight, block constants included (see
    /// [`QuantConfig::bytes_per_weight`](crate::quant::QuantConfig::bytes_per_weight)).
    pub(crate) fn bytes_per_param(&self) -> f64 {
        match self {
            Self::F32 => 4.0,
            Self::F16 | Self::Bf16 => 2.0,
            Self::Quant(q) => q.bytes_per_weight(),
        }
    }
}

/// Which parameters a run trains.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Training {
    /// Inference only: no gradients, no optimizer, no saved activations.
    Inference,
    /// LoRA of `rank` on these projections.
    Lora { rank: usize, targets: Vec<Proj> },
    /// Every parameter.
    Full,
    /// Some other method (adapters, prompts, (IA)3, BitFit...) with this many trainable
    /// parameters, measured on a live model. Its activations are estimated as if every
    /// projection's input were kept: an upper bound.
    Adapters { trainable: u64 },
}

impl Training {
    /// `lora` (of `rank` on `targets`: projection names, or `all-linear`), `full`, or `none`.
    pub fn parse(method: &str, rank: usize, targets: &[String]) -> Result<Self, String> {
        let targets: Vec<Proj> = if targets == ["all-linear"] {
            Proj::ALL.to_vec()
        } else {
            targets
                .iter()
                .map(|t| {
                    Proj::parse(t).ok_or_else(|| {
                        format!(
                            "unknown target '{t}' (projections: {}, or all-linear)",
                            Proj::ALL.map(|p| p.name()).join(", ")
                        )
                    })
                })
                .collect::<Result<_, _>>()?
        };
        match method {
            "lora" => Ok(Self::Lora { rank, targets }),
            "full" => Ok(Self::Full),
            "none" => Ok(Self::Inference),
            other => Err(format!("unknown method '{other}' (lora, full or none)")),
        }
    }
}

/// The run to estimate.
#[derive(Clone, Debug, Serialize)]
pub struct RunShape {
    pub config: LlamaConfig,
    pub training: Training,
    /// Storage of the projection weights; embeddings, norms and the head stay in f32.
    pub precision: WeightStorage,
    pub batch: usize,
    pub seq: usize,
}

impl RunShape {
    /// Checks a quantized precision against every projection's rows.
    pub fn validate(&self) -> Result<(), QuantError> {
        if let WeightStorage::Quant(q) = self.precision {
            for &t in self.config.projections() {
                q.validate(projection_shape(&self.config, t).0)
                    .map_err(|e| QuantError::Invalid(format!("{t}: {e}")))?;
            }
        }
        Ok(())
    }
}

/// Estimated bytes by component.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Footprint {
    pub weights: u64,
    pub adapters: u64,
    pub gradients: u64,
    pub optimizer: u64,
    pub activations: u64,
    /// The process itself: code, Lua, tokenizer.
    pub runtime: u64,
    pub params: u64,
    pub trainable: u64,
}

impl Footprint {
    pub fn total(&self) -> u64 {
        self.weights
            + self.adapters
            + self.gradients
            + self.optimizer
            + self.activations
            + self.runtime
    }

    /// Each component by name, then the total: the rows of every report.
    pub(crate) fn components(&self) -> [(&'static str, u64); 7] {
        [
            ("weights", self.weights),
            ("adapters", self.adapters),
            ("gradients", self.gradients),
            ("optimizer", self.optimizer),
            ("activations", self.activations),
            ("runtime", self.runtime),
            ("total", self.total()),
        ]
    }
}

/// Bytes of the runner process besides the model: measured on this machine as the resident
/// size of a sweep trial with nothing loaded (10 MB), and with SmolLM2 loaded minus its weights
/// (27 MB, mostly the tokenizer).
pub(crate) const RUNTIME_BYTES: u64 = 30 << 20;

/// Parameter counts: projections (the quantizable part) and the rest.
pub(crate) fn param_split(c: &LlamaConfig) -> (u64, u64) {
    let proj: usize = c
        .projections()
        .iter()
        .map(|&t| projection_shape(c, t))
        .map(|(i, o)| i * o)
        .sum::<usize>()
        * c.num_hidden_layers;
    let d = c.hidden_size;
    let embed = c.vocab_size * d * if c.tie_word_embeddings { 1 } else { 2 };
    let norms = (2 * c.num_hidden_layers + 1) * d;
    (proj as u64, (embed + norms) as u64)
}

pub fn estimate(run: &RunShape) -> Footprint {
    let c = &run.config;
    let (proj, rest) = param_split(c);
    let weights = (proj as f64 * run.precision.bytes_per_param()) as u64 + 4 * rest;
    let (adapter_params, trained) = match &run.training {
        Training::Inference => (0, 0),
        Training::Lora { rank, targets } => {
            // "all-linear" names every kind; a layer has only its family's.
            let per_layer: usize = targets
                .iter()
                .filter(|t| c.projections().contains(t))
                .map(|&t| projection_shape(c, t))
                .map(|(i, o)| rank * (i + o))
                .sum();
            let n = (per_layer * c.num_hidden_layers) as u64;
            (n, n)
        }
        Training::Full => (0, proj + rest),
        Training::Adapters { trainable } => (*trainable, *trainable),
    };
    let activations = match run.training {
        Training::Inference => 0,
        _ => 4 * activation_floats(run),
    };
    Footprint {
        weights,
        adapters: 4 * adapter_params,
        gradients: 4 * trained,
        // AdamW keeps two f32 moments per trained parameter.
        optimizer: 8 * trained,
        activations,
        runtime: RUNTIME_BYTES,
        params: proj + rest,
        trainable: trained,
    }
}

/// f32 values alive at the start of the backward pass (the peak), for runner's Llama with the
/// fused kernels of `kernels` (flex).
///
/// Per layer, with N = batch·seq tokens, d the width, kv the key/value width, f the MLP width
/// and S = batch·heads·seq² attention scores, the graph keeps: the residual stream before each
/// norm (2·N·d); the rotated queries and keys and the values (N·d + 2·N·kv); the attention
/// probabilities (S); the gate and up projections SwiGLU multiplies (2·N·f); plus the input of
/// every projection that has something to train (N·d for q/k/v together, for o, for gate/up
/// together; N·f for down), and with full fine-tuning the normalised streams the norm weights
/// multiply (2·N·d). Once per step: the final norm's input and output (2·N·d), one chunk of
/// the head's logits, turned into their gradient in place (256 rows × vocab), and one layer's
/// worth of activation gradients in flight during the backward pass.
pub(crate) fn activation_floats(run: &RunShape) -> u64 {
    let c = &run.config;
    let n = (run.batch * run.seq) as u64;
    let d = c.hidden_size as u64;
    let kv = (c.num_key_value_heads * c.head_dim()) as u64;
    let f = c.intermediate_size as u64;
    let s = (run.batch * c.num_attention_heads * run.seq * run.seq) as u64;
    let trains = |proj: Proj| match &run.training {
        Training::Full | Training::Adapters { .. } => true,
        Training::Lora { targets, .. } => targets.contains(&proj),
        Training::Inference => false,
    };
    let mut per_layer = 2 * n * d + n * d + 2 * n * kv + s + 2 * n * f;
    if trains(Proj::Q) || trains(Proj::K) || trains(Proj::V) {
        per_layer += n * d;
    }
    if trains(Proj::O) {
        per_layer += n * d;
    }
    if trains(Proj::Gate) || trains(Proj::Up) {
        per_layer += n * d;
    }
    if trains(Proj::Down) {
        per_layer += n * f;
    }
    if run.training == Training::Full {
        per_layer += 2 * n * d;
    }
    let once = 2 * n * d + 256 * c.vocab_size as u64;
    per_layer * (c.num_hidden_layers as u64 + 1) + once
}

/// The rule-of-thumb table: bytes to hold `params` parameters at each precision, and what
/// full fine-tuning with AdamW needs on top (f32 gradients and two f32 moments: 12 bytes per
/// parameter) — activations excluded.
pub(crate) fn precision_table(params: u64) -> Vec<(String, u64, u64)> {
    let rows = [
        WeightStorage::F32,
        WeightStorage::F16,
        WeightStorage::Bf16,
        WeightStorage::Quant(QuantConfig {
            dtype: QuantDtype::Int8,
            block: 64,
            double: false,
        }),
        WeightStorage::Quant(QuantConfig {
            dtype: QuantDtype::Int4,
            block: 64,
            double: false,
        }),
        WeightStorage::Quant(QuantConfig {
            dtype: QuantDtype::Nf4,
            block: 64,
            double: true,
        }),
    ];
    rows.iter()
        .map(|p| {
            let load = (params as f64 * p.bytes_per_param()) as u64;
            (p.name(), load, load + 12 * params)
        })
        .collect()
}

/// Built-in shapes for models people size up, so that `runner mem` needs no download.
pub(crate) fn named_shape(name: &str) -> Option<(&'static str, LlamaConfig)> {
    let base = LlamaConfig::smollm2_135m();
    match name.to_ascii_lowercase().as_str() {
        "smollm2-135m" | "smollm2-135m-instruct" => Some(("SmolLM2-135M", base)),
        "llama-3.2-1b" | "llama-3.2-1b-instruct" => Some((
            "Llama-3.2-1B",
            LlamaConfig {
                vocab_size: 128_256,
                hidden_size: 2048,
                intermediate_size: 8192,
                num_hidden_layers: 16,
                num_attention_heads: 32,
                num_key_value_heads: 8,
                rope_theta: 500_000.0,
                max_position_embeddings: 131_072,
                tie_word_embeddings: true,
                ..base
            },
        )),
        "tinyllama-1.1b" => Some((
            "TinyLlama-1.1B",
            LlamaConfig {
                vocab_size: 32_000,
                hidden_size: 2048,
                intermediate_size: 5632,
                num_hidden_layers: 22,
                num_attention_heads: 32,
                num_key_value_heads: 4,
                rope_theta: 10_000.0,
                max_position_embeddings: 2048,
                tie_word_embeddings: false,
                ..base
            },
        )),
        _ => None,
    }
}

/// The shape of a model given by name (built-in shapes), Hugging Face directory, config.json
/// or .gguf file; reads only the configuration, never the weights.
pub fn model_shape(model: &str) -> Result<(String, LlamaConfig), crate::model::load::LoadError> {
    if let Some((name, config)) = named_shape(model) {
        return Ok((name.to_string(), config));
    }
    let path = std::path::Path::new(model);
    let known = "smollm2-135m, llama-3.2-1b, tinyllama-1.1b";
    if path.extension().is_some_and(|e| e == "gguf") {
        let f = crate::model::load::GgufFile::open(path)
            .map_err(crate::model::load::LoadError::from)?;
        return Ok((model.to_string(), crate::model::load::config_from_gguf(&f)?));
    }
    let dir = if path.file_name().is_some_and(|f| f == "config.json") {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    if dir.join("config.json").is_file() {
        return Ok((
            model.to_string(),
            crate::model::load::hf_dir::read_config(dir)?,
        ));
    }
    Err(crate::model::load::LoadError::File {
        path: path.to_path_buf(),
        msg: format!(
            "not a built-in shape ({known}), a Hugging Face directory, a config.json or a .gguf file"
        ),
    })
}

/// A plain-text report: the breakdown for `run`, then the rule-of-thumb precision table.
pub fn report(name: &str, run: &RunShape) -> String {
    let f = estimate(run);
    let mb = |b: u64| b as f64 / (1u64 << 20) as f64;
    let (proj, _) = param_split(&run.config);
    let training = match &run.training {
        Training::Inference => "inference".to_string(),
        Training::Lora { rank, targets } => {
            let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
            format!("LoRA r={rank} on {}", names.join(","))
        }
        Training::Full => "full fine-tuning (AdamW)".to_string(),
        Training::Adapters { trainable } => format!("{trainable} trainable parameters"),
    };
    let block = match run.precision {
        WeightStorage::Quant(q) => format!(" (block {})", q.block),
        _ => String::new(),
    };
    let mut out = format!(
        "{name}: {:.1}M parameters ({:.1}M in projections); {training}; projections in {}{block}, the rest in fp32; batch {} x {} tokens\n\n",
        f.params as f64 / 1e6,
        proj as f64 / 1e6,
        run.precision.name(),
        run.batch,
        run.seq
    );
    out += "| component | MB |\n|---|---:|\n";
    for (label, bytes) in f.components() {
        out += &format!("| {label} | {:.1} |\n", mb(bytes));
    }
    out += &format!(
        "\nRule of thumb for {:.1}M parameters (weights only; full fine-tuning adds f32 gradients and AdamW's two moments, 12 B per parameter, plus activations):\n\n| precision | bytes/param | load | full fine-tuning |\n|---|---:|---:|---:|\n",
        f.params as f64 / 1e6
    );
    let gb = |b: u64| {
        let g = b as f64 / 1e9;
        if g >= 1.0 {
            format!("{g:.2} GB")
        } else {
            format!("{:.0} MB", b as f64 / 1e6)
        }
    };
    for (label, load, full) in precision_table(f.params) {
        out += &format!(
            "| {label} | {:.3} | {} | {} |\n",
            load as f64 / f.params as f64,
            gb(load),
            gb(full)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2_parameter_split_matches_the_model() {
        let (proj, rest) = param_split(&LlamaConfig::smollm2_135m());
        assert_eq!(proj + rest, 134_515_008);
    }

    #[test]
    fn four_bit_bytes_per_parameter() {
        let nf4 = WeightStorage::parse("nf4", 64, true).unwrap();
        assert!((nf4.bytes_per_param() - (0.5 + (1.0 + 4.0 / 256.0) / 64.0)).abs() < 1e-12);
        assert_eq!(
            WeightStorage::parse("int4", 64, false)
                .unwrap()
                .bytes_per_param(),
            0.5 + 4.0 / 64.0
        );
        assert!(
            WeightStorage::parse("int3", 64, false)
                .unwrap_err()
                .to_string()
                .contains("expected fp32, fp16, bf16, int8, int4, fp4 or nf4")
        );
    }

    #[test]
    fn a_billion_parameters_at_each_precision() {
        let t = precision_table(1_000_000_000);
        let gb = |b: u64| b as f64 / 1e9;
        assert_eq!(gb(t[0].1), 4.0);
        assert_eq!(gb(t[1].1), 2.0);
        assert!((gb(t[3].1) - 1.0625).abs() < 1e-9);
        assert!((gb(t[5].1) - 0.5159).abs() < 1e-3);
        assert_eq!(gb(t[0].2), 16.0);
    }
}
