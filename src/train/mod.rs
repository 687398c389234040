//! Losses, the optimizer and the training/evaluation steps.

pub mod checkpoint;
pub mod classify;
pub(crate) mod consistency;
pub mod dpo;
pub(crate) mod gen_eval;
pub mod head_loss;
pub mod intrinsic;
pub mod loss;
pub(crate) mod metrics;
pub(crate) mod optim;
pub mod perplexity;
#[cfg(all(test, feature = "flex"))]
mod preference_tests;
pub mod reward;
pub mod rl;
pub mod trainer;

pub use optim::{AdamW, AdamWConfig, GradMap};
pub use perplexity::{perplexity, token_logprobs};
pub use trainer::{
    EvalResult, Progress, Schedule, ScheduleKind, StepReport, TrainError, TrainOptions, Trainer,
    evaluate, input_tensor,
};
