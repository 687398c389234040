//! Loading pretrained weights: GGUF files (llama.cpp) and Hugging Face safetensors directories.

pub(crate) mod build;
pub(crate) mod dequant;
pub(crate) mod gguf;
pub(crate) mod gguf_llama;
pub(crate) mod hf_dir;
pub(crate) mod kquant;

pub use gguf::{GgufError, GgufFile};
pub(crate) use gguf_llama::{LoadError, config_from_gguf};
pub use hf_dir::load_llama_hf_dir;
