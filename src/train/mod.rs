//! Losses, the optimizer and the training/evaluation steps.

pub mod loss;
pub mod optim;
pub mod trainer;

pub use optim::{AdamW, AdamWConfig};
pub use trainer::{evaluate, EvalResult, Schedule, ScheduleKind, TrainError, Trainer};
