//! runner: Lua recipes for fine-tuning language models on Burn tensors.
//!
//! The Rust core (model, methods, data, training, sweeps) is usable without Lua; `lua` binds it.

pub mod backend;
pub mod data;
pub mod lua;
pub mod model;
pub mod peft;
pub mod sweep;
pub mod train;
