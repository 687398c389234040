//! Loading a pretrained model and its tokenizer by name or path.

use burn::prelude::*;

use crate::data::tokenizer::{TextTokenizer, TokenizerError};
use crate::hub::{self, HubError};
use crate::model::Llama;
use crate::model::load::gguf_llama::load_llama_gguf_quantized;
use crate::model::load::hf_dir::load_llama_hf_dir_quantized;
use crate::model::load::{GgufFile, LoadError};
use crate::quant::QuantConfig;

#[derive(Debug, thiserror::Error)]
pub enum PretrainedError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(
        "{0}: expected a .gguf file or a Hugging Face model directory (config.json + *.safetensors)"
    )]
    Format(String),
}

pub struct Pretrained<B: Backend> {
    pub model: Llama<B>,
    /// `None` for a directory without tokenizer.json.
    pub tokenizer: Option<TextTokenizer>,
    pub source: String,
}

pub fn load<B: Backend>(
    name_or_path: &str,
    device: &B::Device,
) -> Result<Pretrained<B>, PretrainedError> {
    load_quantized(name_or_path, device, None)
}

/// [`load`], quantizing the projections as they are read when `quant` is given (the f32
/// weights of the whole model never exist at once).
pub(crate) fn load_quantized<B: Backend>(
    name_or_path: &str,
    device: &B::Device,
    quant: Option<QuantConfig>,
) -> Result<Pretrained<B>, PretrainedError> {
    let path = hub::resolve(name_or_path)?;
    let source = path.display().to_string();
    if path.is_dir() {
        let model = load_llama_hf_dir_quantized::<B>(&path, device, quant)?;
        let tokenizer = if path.join("tokenizer.json").exists() {
            Some(TextTokenizer::from_hf_dir(&path)?)
        } else {
            None
        };
        return Ok(Pretrained {
            model,
            tokenizer,
            source,
        });
    }
    if path.extension().is_none_or(|e| e != "gguf") {
        return Err(PretrainedError::Format(source));
    }
    let file = GgufFile::open(&path).map_err(LoadError::from)?;
    let tokenizer = TextTokenizer::from_gguf(&file)?;
    let model = load_llama_gguf_quantized::<B>(&file, device, quant)?;
    Ok(Pretrained {
        model,
        tokenizer: Some(tokenizer),
        source,
    })
}
