//! Loading a pretrained model and its tokenizer by name or path.

use burn::prelude::*;

use crate::hub::{self, HubError};
use crate::model::load::{load_llama_gguf, GgufFile, LoadError};
use crate::model::Llama;
use crate::tokenizer::{TextTokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum PretrainedError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{0}: only GGUF files (.gguf) can be loaded so far; Hugging Face directories are planned")]
    Format(String),
}

pub struct Pretrained<B: Backend> {
    pub model: Llama<B>,
    pub tokenizer: TextTokenizer,
    pub source: String,
}

pub fn load<B: Backend>(name_or_path: &str, device: &B::Device) -> Result<Pretrained<B>, PretrainedError> {
    let path = hub::resolve(name_or_path)?;
    if path.extension().is_none_or(|e| e != "gguf") {
        return Err(PretrainedError::Format(path.display().to_string()));
    }
    let file = GgufFile::open(&path).map_err(LoadError::from)?;
    let tokenizer = TextTokenizer::from_gguf(&file)?;
    let model = load_llama_gguf::<B>(&file, device)?;
    Ok(Pretrained { model, tokenizer, source: path.display().to_string() })
}
