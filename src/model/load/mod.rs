//! Loading pretrained weights: GGUF files (llama.cpp) into the Llama decoder.

pub mod dequant;
pub mod gguf;
pub mod gguf_llama;

pub use gguf::{GgufError, GgufFile};
pub use gguf_llama::{config_from_gguf, load_llama_gguf, LoadError};
