//! All integration tests, one binary: linking the crate once instead of once per file.

mod common;

mod backends;
mod cli;
mod collation;
mod generate;
mod head_loss;
mod lora_core;
mod optim;
mod paper_tables;
mod parity;
mod peft_methods;
mod qlora;
mod quant;
mod reliability;
mod serve;
mod slurm;
mod smollm2;
mod streaming;
mod sweep_engine;
mod sweeps;
mod train_loop;
