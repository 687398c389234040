//! Llama-architecture configuration, with the field names of Hugging Face `config.json`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "default_head_dim_none")]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama 3.1-style frequency-dependent rope scaling (`rope_type = "llama3"`); `None` is plain RoPE.
    #[serde(default)]
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Per-frequency divisors of the rotary inverse frequencies (one per pair of head
    /// dimensions), as GGUF stores rope scaling in `rope_freqs.weight` when they match no
    /// Llama 3 scaling; not part of transformers' config.
    #[serde(skip)]
    pub rope_freq_factors: Option<Vec<f64>>,
    /// Mistral's sliding-window attention: a token attends to itself and the `window − 1`
    /// positions before it; `None` attends to every earlier position.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Biases on q, k, v and o (transformers' Llama `attention_bias`).
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on gate, up and down (transformers' Llama `mlp_bias`).
    #[serde(default)]
    pub mlp_bias: bool,
    /// Which layers use `sliding_window` (transformers' `layer_types`); `None`: every layer
    /// does (Mistral).
    #[serde(default)]
    pub layer_types: Option<Vec<LayerType>>,
    /// Rotary base of the sliding-window layers (Gemma 3's `rope_local_base_freq`); they use
    /// no rope scaling. `None`: every layer uses `rope_theta`.
    #[serde(default, rename = "rope_local_base_freq")]
    pub rope_local_theta: Option<f64>,
    /// Linear rope scaling (`rope_type = "linear"`): the inverse frequencies divided by this
    /// factor, on every layer but Gemma 3's sliding ones.
    #[serde(skip)]
    pub rope_linear_factor: Option<f64>,
    /// Attention scores are scaled by `query_pre_attn_scalar^-1/2` instead of `head_dim^-1/2`
    /// (Gemma).
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    /// Attention scores soft-capped as `c · tanh(s / c)` before the mask (Gemma 2).
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    /// Output logits soft-capped as `c · tanh(z / c)` (Gemma 2).
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    /// The special tokens' ids as config.json gives them (a number or a list), written back
    /// when saving: transformers' defaults for some families lie outside a small vocabulary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<serde_json::Value>,
    /// Which family's checkpoint this is: the differences from Llama are data here (which
    /// projections carry biases, q/k norms), not separate model code.
    #[serde(skip)]
    pub family: Family,
}

/// The attention of one layer: within the sliding window, or over every earlier position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    SlidingAttention,
    FullAttention,
}

/// A decoder family that shares Llama's network, with its differences.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    #[default]
    Llama,
    /// An optional sliding attention window (`sliding_window`).
    Mistral,
    /// Biases on q, k and v.
    Qwen2,
    /// An RMSNorm over each head of q and of k, before the rotary embedding.
    Qwen3,
    /// GeGLU, RMSNorm weights stored as `w` and applied as `1 + w`, the embedding scaled by
    /// √hidden, a norm after attention and after the MLP as well as before each, alternating
    /// sliding-window layers, soft-capped attention scores and logits.
    Gemma2,
    /// Gemma 2 without the soft-capping, with Qwen3's q/k norms, and a local rotary base for
    /// its sliding layers (`gemma3_text`).
    Gemma3,
    /// q, k, v in one projection and gate, up in another (`qkv_proj`, `gate_up_proj`), and an
    /// optional sliding window on every layer.
    Phi3,
}

impl Family {
    pub const MODEL_TYPES: [&'static str; 6] = [
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3_text",
    ];

    pub fn parse(model_type: &str) -> Option<Self> {
        Some(match model_type {
            "llama" => Self::Llama,
            "mistral" => Self::Mistral,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "gemma2" => Self::Gemma2,
            "gemma3_text" => Self::Gemma3,
            "phi3" => Self::Phi3,
            _ => return None,
        })
    }

    /// `config.json`'s `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3_text",
            Self::Phi3 => "phi3",
        }
    }

    /// The prefix of transformers' class names (`Qwen2ForCausalLM`).
    pub fn class_prefix(self) -> &'static str {
        match self {
            Self::Llama => "Llama",
            Self::Mistral => "Mistral",
            Self::Qwen2 => "Qwen2",
            Self::Qwen3 => "Qwen3",
            Self::Gemma2 => "Gemma2",
            Self::Gemma3 => "Gemma3",
            Self::Phi3 => "Phi3",
        }
    }

    /// Gemma's: norm weights applied as `1 + w`, embeddings scaled by √hidden, GeGLU, and
    /// a norm after attention and after the MLP.
    pub(crate) fn is_gemma(self) -> bool {
        matches!(self, Self::Gemma2 | Self::Gemma3)
    }

    /// What a stored norm weight is offset by in the network: Gemma stores `w` and applies
    /// `1 + w` (computed in f32, as transformers does), so runner adds it when loading and
    /// takes it off when saving.
    pub(crate) fn norm_offset(self) -> f32 {
        if self.is_gemma() { 1.0 } else { 0.0 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

impl Llama3RopeScaling {
    /// Rescales one rotary inverse frequency as transformers' `_compute_llama3_parameters` does:
    /// long wavelengths are divided by `factor`, short ones kept, the band between interpolated.
    pub(crate) fn scale(&self, inv_freq: f64) -> f64 {
        let old = self.original_max_position_embeddings as f64;
        let (low_wavelen, high_wavelen) = (old / self.low_freq_factor, old / self.high_freq_factor);
        let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
        if wavelen < high_wavelen {
            inv_freq
        } else if wavelen > low_wavelen {
            inv_freq / self.factor
        } else {
            let smooth = (old / wavelen - self.low_freq_factor)
                / (self.high_freq_factor - self.low_freq_factor);
            (1.0 - smooth) * inv_freq / self.factor + smooth * inv_freq
        }
    }
}

fn default_head_dim_none() -> Option<usize> {
    None
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_max_pos() -> usize {
    2048
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{field} must be at least 1 (got {value})")]
    Zero { field: &'static str, value: usize },
    #[error("num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")]
    Gqa { heads: usize, kv_heads: usize },
    #[error(
        "hidden_size ({hidden}) must be divisible by num_attention_heads ({heads}) when head_dim is not given"
    )]
    HeadDim { hidden: usize, heads: usize },
    #[error("layer_types names {types} layers but the model has {layers} (num_hidden_layers)")]
    LayerTypes { types: usize, layers: usize },
    #[error("head_dim ({0}) must be even for rotary embeddings")]
    OddHeadDim(usize),
    #[error("{field} must be a positive finite number (got {value})")]
    Positive { field: &'static str, value: f64 },
    #[error(
        "a model of this shape needs about {} for its weights alone ({layers} layers, \
         hidden size {hidden}, vocabulary {vocab}), more than the {} of memory this machine \
         has available; check the model's size settings",
        crate::util::human_bytes(*need),
        crate::util::human_bytes(*available)
    )]
    TooLarge {
        need: f64,
        available: f64,
        layers: usize,
        hidden: usize,
        vocab: usize,
    },
}

impl LlamaConfig {
    /// Whether projection `proj` carries a bias.
    pub(crate) fn has_bias(&self, proj: crate::model::llama::Proj) -> bool {
        use crate::model::llama::Proj;
        match self.family {
            Family::Qwen2 => matches!(proj, Proj::Q | Proj::K | Proj::V),
            _ if proj.is_mlp() => self.mlp_bias,
            _ => self.attention_bias,
        }
    }

    /// The rotary inverse frequency of dimension pair `pair` before any scaling:
    /// `θ^(−2·pair / head_dim)`.
    pub(crate) fn rope_base_inv_freq(&self, pair: usize) -> f64 {
        1.0 / self
            .rope_theta
            .powf((2 * pair) as f64 / self.head_dim() as f64)
    }

    /// The rotary inverse frequency of dimension pair `pair`, with the model's scaling; `local`
    /// for a sliding-window layer with its own base (Gemma 3's `rope_local_base_freq`), which
    /// is not scaled.
    pub(crate) fn rope_inv_freq(&self, pair: usize, local: bool) -> f64 {
        let hd = self.head_dim() as f64;
        if let Some(theta) = self.rope_local_theta.filter(|_| local) {
            return 1.0 / theta.powf((2 * pair) as f64 / hd);
        }
        let mut f = self.rope_base_inv_freq(pair);
        if let Some(s) = &self.rope_scaling {
            f = s.scale(f);
        }
        if let Some(factor) = self.rope_linear_factor {
            f /= factor;
        }
        match &self.rope_freq_factors {
            Some(factors) => f / factors[pair],
            None => f,
        }
    }

    /// The projections of each layer: q, k, v, o, gate, up, down, or Phi-3's fused four.
    pub(crate) fn projections(&self) -> &'static [crate::model::llama::Proj] {
        use crate::model::llama::Proj;
        if self.family == Family::Phi3 {
            &Proj::FUSED
        } else {
            &Proj::SEPARATE
        }
    }

    /// Whether q and k are normalised per head (Qwen3, Gemma 3).
    pub(crate) fn qk_norm(&self) -> bool {
        matches!(self.family, Family::Qwen3 | Family::Gemma3)
    }

    /// Whether layer `layer` attends within `sliding_window` only.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window.is_some()
            && self
                .layer_types
                .as_ref()
                .is_none_or(|types| types.get(layer) == Some(&LayerType::SlidingAttention))
    }

    /// The attention scores' scale: `query_pre_attn_scalar^-1/2` (Gemma), else `head_dim^-1/2`.
    pub(crate) fn attention_scale(&self) -> f64 {
        1.0 / self
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim() as f64)
            .sqrt()
    }

    /// The factor token embeddings are multiplied by: √hidden for Gemma (rounded to f32, as
    /// transformers makes it a tensor of the weights' type), else 1.
    pub(crate) fn embed_scale(&self) -> Option<f32> {
        self.family
            .is_gemma()
            .then(|| (self.hidden_size as f64).sqrt() as f32)
    }

    /// Dimension of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// SmolLM2-135M's shape (the weights come from the hub or a random init).
    pub fn smollm2_135m() -> Self {
        Self {
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            ..Self::plain(49152, 576, 1536, 30, 9, 3)
        }
    }

    /// A Llama of this shape (vocabulary, hidden size, MLP width, layers, heads, key/value
    /// heads) with config.json's defaults and none of the options: no biases, rope scaling,
    /// windows or other family's differences.
    pub(crate) fn plain(
        vocab: usize,
        hidden: usize,
        ffn: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
    ) -> Self {
        Self {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: ffn,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim: None,
            rms_norm_eps: default_rms_eps(),
            rope_theta: default_rope_theta(),
            max_position_embeddings: default_max_pos(),
            tie_word_embeddings: false,
            rope_scaling: None,
            rope_freq_factors: None,
            sliding_window: None,
            attention_bias: false,
            mlp_bias: false,
            layer_types: None,
            rope_local_theta: None,
            rope_linear_factor: None,
            query_pre_attn_scalar: None,
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            family: Family::Llama,
        }
    }

    /// Bytes of the weights, computed in floating point so that no size overflows: the
    /// embeddings, head and norms in f32 and the projections at `projection_bytes` per weight
    /// (4 in f32; about 0.56 in NF4 with its block scales).
    pub fn weight_bytes(&self, projection_bytes: f64) -> f64 {
        let (d, vocab, ffn) = (
            self.hidden_size as f64,
            self.vocab_size as f64,
            self.intermediate_size as f64,
        );
        let hd = self.head_dim() as f64;
        let (h, kv) = (
            self.num_attention_heads as f64,
            self.num_key_value_heads as f64,
        );
        let per_layer = d * h * hd * 2.0 + d * kv * hd * 2.0 + 3.0 * d * ffn;
        let heads = if self.tie_word_embeddings { 1.0 } else { 2.0 };
        let f32_params = heads * vocab * d + (2.0 * self.num_hidden_layers as f64 + 1.0) * d;
        f32_params * 4.0 + self.num_hidden_layers as f64 * per_layer * projection_bytes
    }

    /// `Err` when the weights alone (see [`weight_bytes`](Self::weight_bytes)) exceed the
    /// memory this machine has available: refused before anything is allocated, where
    /// allocating would abort the process or push the machine into swap.
    pub(crate) fn check_fits(&self, projection_bytes: f64) -> Result<(), ConfigError> {
        let need = self.weight_bytes(projection_bytes);
        match crate::memory::available_bytes() {
            Some(available) if need > available as f64 => Err(ConfigError::TooLarge {
                need,
                available: available as f64,
                layers: self.num_hidden_layers,
                hidden: self.hidden_size,
                vocab: self.vocab_size,
            }),
            _ => Ok(()),
        }
    }

    /// Checks every value Burn would otherwise panic on.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field, value });
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(ConfigError::Gqa {
                heads: self.num_attention_heads,
                kv_heads: self.num_key_value_heads,
            });
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ConfigError::HeadDim {
                hidden: self.hidden_size,
                heads: self.num_attention_heads,
            });
        }
        if self.head_dim() == 0 {
            return Err(ConfigError::Zero {
                field: "head_dim",
                value: 0,
            });
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(ConfigError::OddHeadDim(self.head_dim()));
        }
        if let Some(r) = &self.rope_scaling {
            let ok = r.factor > 0.0
                && r.low_freq_factor > 0.0
                && r.high_freq_factor > r.low_freq_factor
                && r.original_max_position_embeddings > 0;
            if !ok {
                return Err(ConfigError::Positive {
                    field: "rope_scaling",
                    value: r.factor,
                });
            }
        }
        for (field, value) in [
            ("rms_norm_eps", Some(self.rms_norm_eps)),
            ("rope_theta", Some(self.rope_theta)),
            ("rope_local_base_freq", self.rope_local_theta),
            ("rope_scaling.factor", self.rope_linear_factor),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
        ] {
            if let Some(value) = value
                && !(value.is_finite() && value > 0.0)
            {
                return Err(ConfigError::Positive { field, value });
            }
        }
        if let Some(types) = &self.layer_types
            && types.len() != self.num_hidden_layers
        {
            return Err(ConfigError::LayerTypes {
                types: types.len(),
                layers: self.num_hidden_layers,
            });
        }
        if self.sliding_window == Some(0) {
            return Err(ConfigError::Zero {
                field: "sliding_window",
                value: 0,
            });
        }
        Ok(())
    }
}

/// Options of a small random model, as `runner.model.tiny{...}` takes them.
#[derive(Clone, Debug)]
pub struct TinyOptions {
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub ffn: Option<usize>,
    pub tied: bool,
    pub max_seq: usize,
    pub rope_theta: f64,
    /// Standard deviation of the random weights; `None` means 1/√d_model, which gives a frozen
    /// random base logits large enough for an adapter to steer (Hugging Face's 0.02 does not).
    pub init_std: Option<f64>,
    pub seed: u64,
}

impl Default for TinyOptions {
    fn default() -> Self {
        Self {
            layers: 2,
            d_model: 64,
            heads: 4,
            kv_heads: 2,
            vocab: 256,
            ffn: None,
            tied: true,
            max_seq: 512,
            rope_theta: 10000.0,
            init_std: None,
            seed: 0,
        }
    }
}

impl TinyOptions {
    pub fn std(&self) -> f64 {
        self.init_std
            .unwrap_or(1.0 / (self.d_model.max(1) as f64).sqrt())
    }

    pub fn config(&self) -> LlamaConfig {
        LlamaConfig {
            rms_norm_eps: 1e-5,
            rope_theta: self.rope_theta,
            max_position_embeddings: self.max_seq,
            tie_word_embeddings: self.tied,
            ..LlamaConfig::plain(
                self.vocab,
                self.d_model,
                // Llama's ratio (8/3 · d) rounded up to a multiple of 8.
                self.ffn.unwrap_or((self.d_model * 8 / 3).div_ceil(8) * 8),
                self.layers,
                self.heads,
                self.kv_heads,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_config_json_parses() {
        let json = r#"{"vocab_size":49152,"hidden_size":576,"intermediate_size":1536,
            "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,
            "rms_norm_eps":1e-5,"rope_theta":100000.0,"max_position_embeddings":8192,
            "tie_word_embeddings":true,"model_type":"llama"}"#;
        let c: LlamaConfig = serde_json::from_str(json).unwrap();
        c.validate().unwrap();
        assert_eq!(c.head_dim(), 64);
    }

    #[test]
    fn bad_gqa_is_rejected() {
        let mut c = TinyOptions::default().config();
        c.num_key_value_heads = 3;
        assert_eq!(
            c.validate(),
            Err(ConfigError::Gqa {
                heads: 4,
                kv_heads: 3
            })
        );
    }
}
