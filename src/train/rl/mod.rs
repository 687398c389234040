//! Online reinforcement learning from sampled completions: rollouts, the formulas of PPO and
//! GRPO as TRL computes them, and the GRPO trainer.

pub mod grpo;
pub mod math;
pub(crate) mod policy;
pub mod rollout;
#[cfg(all(test, feature = "flex"))]
mod tests;

pub use grpo::{GrpoConfig, GrpoMetrics, GrpoReport, GrpoTrainer};
pub use math::{GrpoLoss, GrpoObjective, KlEstimator, ScaleRewards};
pub use rollout::{Completions, RolloutOptions};
