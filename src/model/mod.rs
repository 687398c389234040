//! The Llama-architecture decoder and its building blocks.

pub(crate) mod adapters;
pub(crate) mod config;
pub mod init;
pub mod linear;
pub mod llama;
pub mod load;
pub mod params;
pub mod quantize;
pub mod save;
pub mod score;

pub use config::{LlamaConfig, TinyOptions};
pub use llama::Llama;
