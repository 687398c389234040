//! Losses, the optimizer and the training/evaluation steps.

pub mod head_loss;
pub mod loss;
pub mod optim;
pub mod perplexity;
pub mod trainer;

pub use optim::{AdamW, AdamWConfig};
pub use perplexity::{perplexity, token_logprobs};
pub use trainer::{evaluate, input_tensor, EvalResult, Schedule, ScheduleKind, TrainError, Trainer};
