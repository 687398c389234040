//! runner: Lua recipes for fine-tuning language models on Burn tensors.
//!
//! The Rust core (model, methods, data, training, sweeps) is usable without Lua; `lua` binds it.

pub mod analysis;
pub mod backend;
pub mod data;
pub mod footprint;
pub mod generate;
pub mod hf_cache;
pub mod hub;
pub mod interrupt;
pub mod kernels;
pub mod lua;
pub mod memory;
pub mod model;
pub mod peft;
pub mod pretrained;
pub(crate) mod progress;
pub mod quant;
pub mod report;
pub mod serve;
pub mod slurm;
pub mod sweep;
pub mod train;
pub(crate) mod util;
pub mod watch;
