//! Loading pretrained weights: GGUF files (llama.cpp) and Hugging Face safetensors directories.

pub mod build;
pub mod dequant;
pub mod gguf;
pub mod gguf_llama;
pub mod hf_dir;

pub use gguf::{GgufError, GgufFile};
pub use gguf_llama::{LoadError, config_from_gguf, load_llama_gguf};
pub use hf_dir::load_llama_hf_dir;
